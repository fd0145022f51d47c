from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from newsletter.content.addresses import clean_name, normalize_address
from newsletter.errors import NewsletterError
from newsletter.storage.models import Member
from tests.steps import import_csv


def write_csv(tmp_path: Path, text: str, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def all_members(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str]]:
    with sessions() as s:
        return {m.email: (m.name, m.status) for m in s.scalars(select(Member))}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Li.Wei@Example.ORG ", "li.wei@example.org"),
        ("<a@example.org>", "a@example.org"),
        ("user@bücher.example", "user@xn--bcher-kva.example"),
        ("user@例子.中国", "user@xn--fsqu00a.xn--fiqs8s"),
    ],
)
def test_addresses_are_normalised(raw: str, expected: str) -> None:
    assert normalize_address(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("no-at-sign", "exactly one @"),
        ("a@@example.org", "exactly one @"),
        ("a b@example.org", "spaces"),
        ("a@example", "invalid domain"),
        ("a..b@example.org", "invalid local part"),
        ("用户@example.org", "SMTPUTF8"),
        ("a@example.org\r\nBcc: x@example.org", "control"),
    ],
)
def test_bad_addresses_say_why(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_address(raw)


def test_names_with_line_breaks_are_refused() -> None:
    assert clean_name("  Li   Wei ") == "Li Wei"
    with pytest.raises(ValueError, match="line break"):
        clean_name("Eve\r\nBcc: victim@example.org")


def test_import_reports_bad_rows_and_keeps_good_ones(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    import_csv(
        sessions, write_csv(tmp_path, "email,name\nkeep@example.org,Already Here\n", "first.csv")
    )
    path = write_csv(
        tmp_path,
        "email,name,company\n"
        "good@example.org,Good One,ACME\n"
        "not-an-address,Bad One,\n"
        '"eve@example.org","Eve\nBcc: victim@example.org",\n'
        "short@example.org\n"
        "用户@example.org,Wide,\n"
        "second@example.org,Second,\n"
        "keep@example.org,,\n",
    )
    report = import_csv(sessions, path)
    assert [(e.line, e.reason.split(" ")[0]) for e in report.errors] == [
        (3, "'not-an-address'"),
        (4, "the"),
        (6, "expected"),
        (7, "'用户@example.org'"),
    ]
    assert "line break" in str(report.errors[1])
    assert str(report.errors[0]).startswith("line 3:")
    members = all_members(sessions)
    assert members == {
        "keep@example.org": ("Already Here", "active"),
        "good@example.org": ("Good One", "active"),
        "second@example.org": ("Second", "active"),
    }
    with sessions() as s:
        good = s.scalar(select(Member).where(Member.email == "good@example.org"))
        assert good is not None and good.attributes == {"company": "ACME"}


def test_duplicates_merge_and_opt_out_wins(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    path = write_csv(
        tmp_path,
        "email,name,status\n"
        "A@Example.org,,\n"
        "a@example.org,Ann,\n"
        "b@example.org,Bob,active\n"
        "B@EXAMPLE.ORG,,unsubscribed\n",
    )
    report = import_csv(sessions, path)
    assert report.merged == 2 and report.added == 2 and not report.errors
    assert all_members(sessions) == {
        "a@example.org": ("Ann", "active"),
        "b@example.org": ("Bob", "unsubscribed"),
    }


def test_import_never_resubscribes(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    import_csv(
        sessions, write_csv(tmp_path, "email,status\ngone@example.org,unsubscribed\n", "a.csv")
    )
    report = import_csv(
        sessions,
        write_csv(tmp_path, "email,name,status\ngone@example.org,Back Again,active\n", "b.csv"),
    )
    assert report.kept_unsubscribed == 1
    assert all_members(sessions)["gone@example.org"] == ("Back Again", "unsubscribed")


def test_unusable_files_are_refused_whole(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    with pytest.raises(NewsletterError, match="no 'email' column"):
        import_csv(sessions, write_csv(tmp_path, "mail,name\nx@example.org,X\n"))
    with pytest.raises(NewsletterError, match="empty"):
        import_csv(sessions, write_csv(tmp_path, ""))
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("email,name\nx@example.org,Jos\xe9\n".encode("latin-1"))
    with pytest.raises(NewsletterError, match="not UTF-8"):
        import_csv(sessions, bad)
    assert all_members(sessions) == {}


def test_example_csv_imports_cleanly(sessions: sessionmaker[Session], site: Path) -> None:
    report = import_csv(sessions, site / "subscribers" / "example.csv")
    assert not report.errors
    members = all_members(sessions)
    assert len(members) >= 5
    assert sum(1 for _, status in members.values() if status == "unsubscribed") == 1
