from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import idna
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from newsletter.cli.main import app
from newsletter.content.addresses import clean_name, normalize_address
from newsletter.content.roster import csv_problem
from newsletter.errors import NewsletterError
from newsletter.storage.models import Member
from tests.snapshot import added, snapshot
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
        ("user@faß.de", "user@xn--fa-hia.de"),  # IDNA 2003 would say fass.de: another domain
        ("user@Σίσυφος.gr", "user@xn--kxa6ajbbmh.gr"),  # final ς kept (2003: xn--kxa6akbbkh)
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
    # Line by line: the quote left open on line 4 is line 4's error, and line 5 is read
    # (and refused) on its own instead of being swallowed into line 4's name.
    assert [(e.line, e.reason.split(" ")[0]) for e in report.errors] == [
        (3, "'not-an-address'"),
        (4, "column"),
        (5, "expected"),
        (6, "expected"),
        (7, "'用户@example.org'"),
    ]
    assert str(report.errors[1]) == (
        "line 4: column 2 ('name'): the quote at character 19 is not closed on this line "
        "(a field cannot span lines)"
    )
    assert str(report.errors[0]).startswith("line 3:")
    members = all_members(sessions)
    assert members == {
        "keep@example.org": ("Already Here", "active"),
        "good@example.org": ("Good One", "active"),
        "second@example.org": ("Second", "active"),
    }
    with sessions() as s:
        good = s.scalar(select(Member).where(Member.email == "good@example.org"))
        assert good is not None
        assert good.attributes == {"company": "ACME"}


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
    assert report.merged == 2
    assert report.added == 2
    assert not report.errors
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


def test_unusable_files_are_refused(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    with pytest.raises(NewsletterError, match="no 'email' column"):
        import_csv(sessions, write_csv(tmp_path, "mail,name\nx@example.org,X\n"))
    with pytest.raises(NewsletterError, match="empty"):
        import_csv(sessions, write_csv(tmp_path, ""))
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("email,name\nx@example.org,Jos\xe9\n".encode("latin-1"))
    # A line that is not UTF-8 is that line's error; a header that is not refuses the file.
    report = import_csv(sessions, bad)
    assert [str(e) for e in report.errors] == [
        "line 2: not UTF-8 text (byte 18 of the line); save the file as UTF-8"
    ]
    header = tmp_path / "latin1-header.csv"
    header.write_bytes("email,n\xe4me\nx@example.org,X\n".encode("latin-1"))
    with pytest.raises(NewsletterError, match="line 1 \\(the header\\): not UTF-8"):
        import_csv(sessions, header)
    assert all_members(sessions) == {}


def test_example_csv_imports_cleanly(sessions: sessionmaker[Session], site: Path) -> None:
    report = import_csv(sessions, site / "subscribers" / "example.csv")
    assert not report.errors
    members = all_members(sessions)
    assert len(members) >= 5
    assert sum(1 for _, status in members.values() if status == "unsubscribed") == 1


# --- domains: IDNA 2008 with UTS 46, never the stdlib's IDNA 2003 ------------------------------

label = st.text(st.sampled_from("abxz09-ßςΣüÜéÅ例子中国\u200d"), min_size=1, max_size=10)


@hypothesis_settings(max_examples=500)
@example(domain="faß.de")
@example(domain="straße.example")
@example(domain="ς.gr")
@given(domain=st.lists(label, min_size=2, max_size=4).map(".".join))
def test_domains_are_encoded_by_idna_2008(domain: str) -> None:
    try:
        expected = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        with pytest.raises(ValueError, match="has an invalid domain"):
            normalize_address(f"user@{domain}")
        return
    assert normalize_address(f"User@{domain}") == f"user@{expected}"
    # The stored form names the very domain written, once mapped (case, width): not a
    # look-alike, as faß.de → fass.de was.
    assert idna.decode(expected) == idna.uts46_remap(domain, transitional=False)


# --- CSV: one line is one row; a bad line names its line and column -------------------------

LIMIT = csv.field_size_limit()


@hypothesis_settings(max_examples=1000)
@example(line='a@example.org,"Ann')
@example(line='a@example.org,"Ann"x')
@example(line='"a""b",c')
@given(line=st.text(st.sampled_from('ab, "\t\\é'), max_size=20))
def test_the_diagnosis_agrees_with_the_csv_module(line: str) -> None:
    try:
        list(csv.reader([line], strict=True))
        refused = False
    except csv.Error:
        refused = True
    assert (csv_problem(line) is not None) == refused


def test_a_field_over_the_csv_limit_is_named() -> None:
    problem = csv_problem("a@example.org," + "x" * (LIMIT + 1))
    assert problem == (
        2,
        f"the field is {LIMIT + 1:,} characters long, over the limit of {LIMIT:,}",
    )
    assert csv_problem("a@example.org," + "x" * LIMIT) is None


BAD_KINDS: dict[str, tuple[Callable[[str, str], str], str]] = {
    # kind: (how the line is written, what its error says)
    "unclosed": (lambda e, n: f'{e},"{n.replace(chr(34), "")}', "column 2 ('name'): the quote"),
    "after quote": (lambda e, n: f'{e},"{n.replace(chr(34), "")}"x', "column 2 ('name'): 'x'"),
    "oversize": (lambda e, n: f"{e},{'x' * (LIMIT + 1)}", "column 2 ('name'): the field is"),
    "address": (lambda e, n: csv_line([e.replace("@", ""), n]), "is not an email address"),
}


def csv_line(fields: list[str]) -> str:
    """One row as a spreadsheet writes it (quoted where needed), without its line break."""
    out = io.StringIO()
    csv.writer(out).writerow(fields)
    return out.getvalue().removesuffix("\r\n")


names = st.text(
    st.characters(categories=("L", "N", "P", "Zs")) | st.sampled_from(",\"'[/b]"), max_size=20
)


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The case: an unbalanced quote used to swallow the next row, reported as a line break.
@example(rows=[("good", "Ann"), ("unclosed", "Bob"), ("good", "Cy")])
@example(rows=[("oversize", ""), ("good", "Dee")])
@given(rows=st.lists(st.tuples(st.sampled_from(["good", *BAD_KINDS]), names), max_size=8))
def test_bad_lines_are_named_and_the_rest_imports(
    tmp_path_factory: pytest.TempPathFactory,
    site: Path,
    database_url: str,
    sessions: sessionmaker[Session],
    rows: list[tuple[str, str]],
) -> None:
    """`newsletter subscribers import` on generated files: each bad line is named on stderr
    with its file and line, the exit code is 1 exactly when there is one, and the good lines
    (and the import's audit entry) are all that is stored."""
    folder = tmp_path_factory.mktemp("csv")
    # The addresses are new in every example, so each one's good rows are all additions.
    prefix = folder.name.replace("_", "-")
    out = io.StringIO()
    out.write("email,name\r\n")
    expected_errors: dict[int, str] = {}
    good: dict[str, tuple[str, str]] = {}
    for line, (kind, name) in enumerate(rows, start=2):
        email = f"{prefix}-{line}@example.org"
        if kind == "good":
            out.write(csv_line([email, name]) + "\r\n")
            good[email] = (" ".join(name.split()), "active")
        else:
            write, says = BAD_KINDS[kind]
            out.write(write(email, name) + "\r\n")
            expected_errors[line] = says
    path = folder / "members.csv"
    path.write_text(out.getvalue(), encoding="utf-8")

    before = snapshot(sessions)
    result = CliRunner().invoke(
        app,
        ["--config", str(site / "config.toml"), "subscribers", "import", str(path)],
        env={"NEWSLETTER_DATABASE_URL": database_url, "COLUMNS": "300"},
    )
    assert result.exit_code == (1 if expected_errors else 0), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors: dict[int, str] = {}
    for said in result.stderr.splitlines():
        assert said.startswith(f"{path}:line "), said
        errors[int(said.removeprefix(f"{path}:line ").split(":")[0])] = said
    assert errors.keys() == expected_errors.keys()
    for number, said in errors.items():
        assert expected_errors[number] in said
    assert f"{len(rows)} rows, {len(good)} added" in result.stdout
    new = added(before, snapshot(sessions))
    assert set(new) <= {"members", "audit_log"}  # the good rows, and the import's own entry
    assert len(new["audit_log"]) == 1
    assert "import-members" in new["audit_log"][0]
    assert {row[1]: (row[2], row[3]) for row in new.get("members", [])} == good
    assert all_members(sessions).items() >= good.items()


def test_subscribers_import_exits_1_naming_lines(
    tmp_path: Path, site: Path, database_url: str
) -> None:
    path = write_csv(
        tmp_path,
        "email,name\n"
        "good@example.org,Good\n"
        'open@example.org,"[/b] never closed\n'
        "next@example.org,Next\n"
        "bad-[/b],[red]Eve[/red]\n",
    )
    result = CliRunner().invoke(
        app,
        ["--config", str(site / "config.toml"), "subscribers", "import", str(path)],
        env={"NEWSLETTER_DATABASE_URL": database_url, "COLUMNS": "200"},
    )
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [
        f"{path}:line 3: column 2 ('name'): the quote at character 18 is not closed on this "
        "line (a field cannot span lines)",
        f"{path}:line 5: 'bad-[/b]' is not an email address (it needs exactly one @)",
    ]
    assert "4 rows, 2 added" in result.stdout
    assert "2 rejected" in result.stdout
