"""An issue's report: on the desk's issue page, as CSV, and from `newsletter issue report`."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from newsletter import config
from newsletter.content.verp import Verp
from newsletter.services import bounces, clicks
from newsletter.services.unit import Services
from newsletter.storage import db
from newsletter.storage.models import Delivery
from newsletter.web.app import create_app
from tests import returns, steps
from tests.conftest import SECRET
from tests.smtpd import RecordingHandler
from tests.test_desk import desk_settings, log_in


def test_the_report_counts_what_went_out_and_came_back(
    site: Path, database_url: str, smtp_server: RecordingHandler
) -> None:
    settings = desk_settings(site, database_url, smtp_server.port)
    sessions = db.open_database(settings.database_url)
    steps.import_csv(sessions, site / "subscribers" / "example.csv")
    steps.import_source(sessions, str(site / "examples" / "seed-feed.xml"))
    asyncio.run(steps.send(settings, sessions))
    with sessions() as s:
        delivered = s.scalar(select(func.max(Delivery.sent_at)))
    assert delivered is not None
    now = [delivered + dt.timedelta(minutes=10)]
    services = Services(settings, sessions, clock=lambda: now[0])
    verp = Verp(settings.list.return_path, services.signer)
    bounces.take(
        services, returns.dsn(to=verp.address(1, 1), recipient="li.wei@example.org"), source="t"
    )
    bounces.take(
        services,
        returns.arf(to="fbl@example.org", recipient="x", original_from=verp.address(1, 2)),
        source="t",
    )
    html = smtp_server.by_recipient()["maria.garcia@example.org"][0].parse()
    body = html.get_body(preferencelist=("html",))
    assert body is not None
    redirect = next(
        u for u in body.get_content().split('"') if u.startswith(settings.list.base_url + "/r/")
    )
    with TestClient(create_app(settings, sessions, clock=lambda: now[0], background=False)) as c:
        assert (
            c.get(redirect.replace(settings.list.base_url, ""), follow_redirects=False).status_code
            == 302
        )
        deadline = time.monotonic() + 10  # the redirect answers before its fetch is stored
        while not services.read(clicks.link_counts, 1)[1]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        now[0] += dt.timedelta(minutes=5)  # past the window: the page decides it
        log_in(c)
        page = c.get("/desk/issues/1")
        assert page.status_code == 200
        assert "What came back" in page.text
        assert 'id="issue-clicks"' in page.text
        assert "1 person" in page.text
        exported = c.get("/desk/issues/1/report.csv")
        assert exported.headers["content-type"].startswith("text/csv")
    rows = {(r[0], r[1]): r[2:] for r in csv.reader(io.StringIO(exported.text))}
    assert rows[("issue", "delivered")][0] == "5"
    assert rows[("issue", "bounced")][0] == "1"
    assert rows[("issue", "complaints")][0] == "1"
    assert rows[("issue", "unsubscribes")][0] == "1"
    assert rows[("issue", "clicks by people")][0] == "1"
    assert sum(int(v[0]) for k, v in rows.items() if k[0] == "link") == 1
    assert any(k[0] == "vote" for k in rows)  # the survey the issue carried
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({config.SECRET_ENV: SECRET, config.DATABASE_URL_ENV: database_url, "COLUMNS": "160"})
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "issue", "report", "1", "--csv", "r.csv"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "clicks by people: 1" in result.stdout
    assert "█" in result.stdout
    assert "complaints" in result.stdout
    assert (site / "r.csv").read_bytes().decode() == exported.text
    sessions.kw["bind"].dispose()
