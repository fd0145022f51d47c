"""Benchmark: compile one issue once, then personalise it per member, against the naive way."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import tempfile
import time
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path

from jinja2 import Environment
from markupsafe import Markup
from sqlalchemy import delete, insert
from sqlalchemy.orm import Session, sessionmaker

from newsletter import config, i18n, site
from newsletter.content import compiler as issue
from newsletter.content.compiler import Shape
from newsletter.content.personalize import Personalizer
from newsletter.content.sources import (
    SourceReport,
    html_to_text,
    parse_feed,
    read_markdown_folder,
)
from newsletter.content.variants import Choice, sections_text
from newsletter.services import variants
from newsletter.services.unit import Services, Unit
from newsletter.storage import db
from newsletter.storage import variants as storage_variants
from newsletter.storage.ledger import Recipient
from newsletter.storage.models import Member
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


def section_items(start: int) -> list[issue.ItemView]:
    """The sample items of the other three sections (examples/sections/*.md)."""
    report = SourceReport("examples/sections")
    found = read_markdown_folder(Path("examples/sections"), None, report)
    return [
        issue.ItemView(
            id=i,
            title=e.title,
            section=e.section,
            url=e.url,
            body_html=Markup(e.body_html),
            body_text=html_to_text(e.body_html),
            published_at=e.published_at,
        )
        for i, e in enumerate(found, start=start)
    ]


def choices(n: int, sections: list[str], languages: tuple[str, ...]) -> list[Choice]:
    """n distinct choices: section subsets (each with Comprehensive Reports) × languages."""
    found: list[Choice] = []
    rest = sections[1:]
    for size in range(len(rest), -1, -1):
        for subset in itertools.combinations(rest, size):
            for language in languages:
                found.append(Choice(language, frozenset({sections[0], *subset}), True))
    if n > len(found):
        raise SystemExit(f"at most {len(found)} variants from {len(sections)} sections")
    return found[:n]


def fill_members(sessions: sessionmaker[Session], count: int, picked: list[Choice]) -> None:
    """`count` active members, spread round-robin over the picked choices."""
    chunk = 50_000
    with sessions.begin() as session:
        session.execute(delete(Member))
        for start in range(0, count, chunk):
            rows: list[dict[str, object]] = []
            for i in range(start, min(count, start + chunk)):
                c = picked[i % len(picked)]
                rows.append(
                    {
                        "email": f"m{i}@example.org",
                        "name": "",
                        "status": "active",
                        "attributes": {},
                        "language": c.language,
                        "sections": sections_text(c.sections),
                        "survey": True,
                        "variant_key": c.key,
                        "bounce_count": 0,
                    }
                )
            session.execute(insert(Member), rows)


def variants_mode(args: argparse.Namespace) -> None:
    """Compile time of a release (the audience's choices read, one compile a variant) as the
    number of variants grows, and as the members grow at a fixed number of variants."""
    settings, _, items, survey = load_inputs()
    items = items + section_items(len(items) + 1)
    present = [s.name for s in issue.group_sections(items, settings.issue.sections)]
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        settings = dataclasses.replace(settings, database=config.DatabaseSettings(url))
        sessions = db.open_database(url)
        services = Services(settings, sessions)

        def release(unit: Unit) -> variants.Plan:
            return variants.compile_all(unit, items, survey, previous=None, shape=Shape())

        def timed(picked: list[Choice], members: int) -> tuple[float, float, int]:
            fill_members(sessions, members, picked)
            plan = services.read(release)  # warm up: templates of each language, caches
            runs, reads = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                services.read(lambda u: storage_variants.audience_choices(u.session, u.now))
                t1 = time.perf_counter()
                plan = services.read(release)
                runs.append(time.perf_counter() - t1)
                reads.append(t1 - t0)
            return statistics.median(runs), statistics.median(reads), plan.compiles

        print(
            f"{len(items)} items in {len(present)} sections, languages {', '.join(i18n.languages())}\n"
        )
        print("compile time by variants (members spread evenly over them)")
        print(
            f"{'variants':>8} | {'members':>9} | {'compiles':>8} | {'release compile ms':>18} | {'ms/variant':>10}"
        )
        base = 0.0
        members = max(16, args.variant_members_fixed)
        for n in [int(v) for v in args.variants.split(",")]:
            picked = choices(n, present, i18n.languages())
            total, _, compiles = timed(picked, members)
            base = base or total
            print(
                f"{n:>8} | {members:>9,} | {compiles:>8} | {total * 1e3:>18.1f} | {total / compiles * 1e3:>10.1f}"
            )
        print("\ncompile time by members (16 variants)")
        print(
            f"{'members':>9} | {'compiles':>8} | {'release compile ms':>18} | {'of which choices read ms':>24} | {'× smallest':>10}"
        )
        picked = choices(16, present, i18n.languages())
        first = 0.0
        for count in [int(c.replace("_", "")) for c in args.variant_members.split(",")]:
            total, read, compiles = timed(picked, count)
            first = first or total
            print(
                f"{count:>9,} | {compiles:>8} | {total * 1e3:>18.1f} | {read * 1e3:>24.1f} | {total / first:>10.2f}"
            )
        sessions.kw["bind"].dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", default="10,1000,100000", help="comma-separated counts")
    parser.add_argument("--naive-sample", type=int, default=200, help="members for the baseline")
    parser.add_argument("--repeat", type=int, default=3, help="compiles per row (median)")
    parser.add_argument(
        "--variants",
        default="",
        help="variants mode: comma-separated variant counts, e.g. 1,4,16 (the release's compile "
        "with members' choices read from a SQLite database)",
    )
    parser.add_argument(
        "--variant-members",
        default="16,1000,100000,1000000",
        help="variants mode: member counts at 16 variants (at least 16: one member a variant)",
    )
    parser.add_argument(
        "--variant-members-fixed", type=int, default=1000, help="members for the by-variants rows"
    )
    args = parser.parse_args()
    if args.variants:
        variants_mode(args)
        return
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
