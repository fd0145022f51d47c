"""Benchmark: compile one issue once, then personalise it per member, against the naive way."""

from __future__ import annotations

import argparse
import statistics
import time
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path

from jinja2 import Environment
from markupsafe import Markup

from newsletter import config, site
from newsletter.content import compiler as issue
from newsletter.content.personalize import Personalizer
from newsletter.content.sources import SourceReport, html_to_text, parse_feed
from newsletter.storage.ledger import Recipient
from newsletter.tokens import Signer

FEED = "examples/seed-feed.xml"
SECRET = {"NEWSLETTER_SECRET_KEY": "bench-secret-key-0123456789"}
ASCII_NAMES = ["Alice Smith", "Bob O'Neil", "Carol Jones", "Dan Brown"]
CHINESE_NAMES = ["王芳", "李伟", "张静", "刘洋"]


# (survey id, question, [(position, label), ...]), as compile_issue takes it.
Survey = tuple[int, str, list[tuple[int, str]]]


def load_inputs() -> tuple[config.Settings, Environment, list[issue.ItemView], Survey]:
    """Settings, Jinja2 environment, item views and survey, all without the database."""
    settings = config.load("config.toml", env=SECRET)
    env = site.environment(Path(".").resolve())
    entries = list(parse_feed(Path(FEED).read_bytes(), FEED, None, SourceReport(FEED)))
    items = [
        issue.ItemView(
            id=i,
            title=e.title,
            section=e.section,
            url=e.url,
            body_html=Markup(e.body_html),
            body_text=html_to_text(e.body_html),
            published_at=e.published_at,
        )
        for i, e in enumerate(entries, start=1)
    ]
    assert settings.survey is not None, "config.toml has no [survey]"
    options = [(i + 1, label) for i, label in enumerate(settings.survey.options)]
    return settings, env, items, (1, settings.survey.question, options)


def recipients(count: int) -> list[Recipient]:
    return [
        Recipient(
            member_id=i,
            email=f"m{i}@example.org",
            name=CHINESE_NAMES[i % 4] if i % 5 == 0 else ASCII_NAMES[i % 4],
        )
        for i in range(1, count + 1)
    ]


def naive_message(
    settings: config.Settings,
    env: Environment,
    items: list[issue.ItemView],
    survey: Survey,
    p: Personalizer,
    r: Recipient,
) -> bytes:
    """The naive way: Jinja2 render, premailer and a MIME message built per member."""
    v = p.values(r)  # the same signed links as the personalised message
    survey_id, question, opts = survey
    base = settings.list.base_url.rstrip("/")
    context = {
        "list": {
            "name": settings.list.name,
            "id": settings.list.id,
            "language": settings.list.language,
            "base_url": base,
            "archive_url": f"{base}/archive",
            "postal_address": settings.list.postal_address,
        },
        "subject": p.compiled.subject,
        "date": p.compiled.created,
        "sections": issue.group_sections(items, settings.issue.sections),
        "item_count": len(items),
        "survey": issue.SurveyView(
            survey_id,
            question,
            tuple(issue.OptionView(pos, label, v[f"vote{pos}"]) for pos, label in opts),
        ),
        "slots": {
            "name": v["name"],
            "view": v["view"],
            "unsubscribe": v["unsubscribe"],
            "trap": v["trap"],
        },
        "previous": None,  # no earlier survey's results, as in the compiled issue here
        "note_html": Markup(""),  # no editor's note, subject or preheader of the desk's
        "note_text": "",
        "preheader": "",
    }
    html = issue.inline_css(env.get_template("email/issue.html").render(context))
    text = env.get_template("email/issue.txt").render(context)
    msg = EmailMessage()
    msg["From"] = Address(settings.list.name, addr_spec=settings.list.from_address)
    msg["To"] = Address(r.name, addr_spec=r.email)
    msg["Subject"] = p.compiled.subject
    msg["Date"] = v["date"]
    msg["Message-ID"] = v["msgid"]
    msg["List-Id"] = f"{settings.list.name} <{settings.list.id}>"
    msg["List-Unsubscribe"] = f"<{v['unsubscribe']}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return bytes(msg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", default="10,1000,100000", help="comma-separated counts")
    parser.add_argument("--naive-sample", type=int, default=200, help="members for the baseline")
    parser.add_argument("--repeat", type=int, default=3, help="compiles per row (median)")
    args = parser.parse_args()
    counts = [int(c.replace("_", "")) for c in args.members.split(",") if c.strip()]

    settings, env, items, survey = load_inputs()
    signer = Signer(settings.require_secret())
    issue.compile_issue(settings, env, items, survey)  # warm up: template loading and caches

    print(f"{len(items)} items, survey with {len(survey[2])} options\n")
    print(f"{'members':>9} | {'compile ms':>10} | {'personalise µs/msg':>18} | {'total s':>8}")
    print(f"{'-' * 9}-+-{'-' * 10}-+-{'-' * 18}-+-{'-' * 8}")
    per_msg: list[float] = []
    for count in counts:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            compiled = issue.compile_issue(settings, env, items, survey)
            times.append(time.perf_counter() - t0)
        people = recipients(count)
        p = Personalizer(compiled, settings, signer, issue_id=1)
        p.message(people[0])  # warm up, not counted
        size = 0
        t0 = time.perf_counter()
        for r in people:
            _, data = p.message(r)
            size += len(data)
        total = time.perf_counter() - t0
        assert b"XSLOT" not in data, "a slot was left unfilled"
        per_msg.append(total / count)
        avg_kb = size / count / 1024
        print(
            f"{count:>9,} | {statistics.median(times) * 1e3:>10.1f} | "
            f"{total / count * 1e6:>18.1f} | {total:>8.3f}"
        )

    sample = recipients(args.naive_sample)
    p = Personalizer(compiled, settings, signer, issue_id=1)
    naive_message(settings, env, items, survey, p, sample[0])  # warm up
    t0 = time.perf_counter()
    for r in sample:
        naive_message(settings, env, items, survey, p, r)
    naive = (time.perf_counter() - t0) / len(sample)
    largest = per_msg[counts.index(max(counts))]
    print(f"\nmessage size: {avg_kb:.1f} KB (HTML + text parts, headers included)")
    print(f"naive baseline ({len(sample)} members): {naive * 1e3:.2f} ms/message")
    print(f"naive / personalised ({max(counts):,} members): {naive / largest:,.0f}x")
    print(f"personalisation under 100 µs/message: {'yes' if max(per_msg) < 100e-6 else 'no'}")


if __name__ == "__main__":
    main()
