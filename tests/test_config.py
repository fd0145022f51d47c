from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard, Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from jinja2 import Environment
from markupsafe import Markup

from newsletter import config
from newsletter.config import Settings
from newsletter.content.compiler import ItemView, render_subject
from newsletter.errors import ConfigError, DatabaseError, HeaderError, MissingSecret
from newsletter.site import environment
from newsletter.storage import db
from tests.dkimkeys import rsa_pem

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
[list]
name = "Test"
id = "test.example.org"
from_address = "news@example.org"
base_url = "https://news.example.org"
"""


def test_repository_config_loads_with_defaults() -> None:
    s = config.load(REPO / "config.toml", env={})
    assert s.list.id == "chinaip.example.org"
    assert s.survey is not None
    assert len(s.survey.options) == 3
    assert s.schedule["weekly"].timezone == "Asia/Shanghai"
    assert s.database_url.startswith("sqlite:////")  # resolved against the site folder
    with pytest.raises(MissingSecret, match="NEWSLETTER_SECRET_KEY"):
        s.require_secret()


def test_every_key_in_config_toml_has_a_comment() -> None:
    lines = (REPO / "config.toml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith(("#", " ", "[", "]")):
            assert lines[i - 1].startswith("#"), f"config.toml line {i + 1} has no comment: {line}"


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = config.load(write(tmp_path, MINIMAL), env={})
    with pytest.raises(AttributeError):
        s.smtp.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL + "\n[smtp]\nhots = 'x'\n", "smtp.hots"),
        (MINIMAL + "\n[smtp]\nport = 'twenty-five'\n", "smtp.port"),
        (MINIMAL + "\n[smtp]\nsecurity = 'ssl'\n", "smtp.security"),
        (MINIMAL + "\nextra = 1\n", "list.extra"),
        (MINIMAL.replace('from_address = "news@example.org"\n', ""), "list.from_address"),
        (MINIMAL + "\n[schedule.daily]\ncron = '0 8 *'\n", "schedule.daily.cron"),
        (MINIMAL + "\n[smtp]\npassword = 'hunter2'\n", "smtp.password"),
        (MINIMAL.replace("https://news", "ftp://news"), "list.base_url"),
    ],
)
def test_bad_keys_are_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text), env={})
    assert info.value.key == key
    assert key in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_smtp_password_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[smtp]\nuser = 'relay-user'\n")
    with pytest.raises(MissingSecret, match="NEWSLETTER_SMTP_PASSWORD"):
        config.load(path, env={})
    s = config.load(path, env={"NEWSLETTER_SMTP_PASSWORD": "pw"})
    assert s.smtp.password == "pw"
    assert "pw" not in repr(s)


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-secret-0123456789\n")
    path = write(tmp_path, MINIMAL)
    assert config.load(
        path, env={"NEWSLETTER_SECRET_KEY_FILE": str(key_file)}
    ).require_secret() == (b"file-secret-0123456789",)
    s = config.load(
        path,
        env={
            "NEWSLETTER_SECRET_KEY": "new-secret-0123456789",
            "NEWSLETTER_OLD_SECRET_KEYS": "old-secret-0123456789",
        },
    )
    assert s.require_secret() == (b"new-secret-0123456789", b"old-secret-0123456789")
    with pytest.raises(ConfigError, match="16 characters"):
        config.load(path, env={"NEWSLETTER_SECRET_KEY": "short"})


def test_subject_with_a_line_break_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(
            write(tmp_path, MINIMAL + 'subject = "Hi\\r\\nBcc: victim@example.com"\n'), env={}
        )
    assert info.value.key == "list.subject"


def test_database_url_from_environment(tmp_path: Path) -> None:
    s = config.load(
        write(tmp_path, MINIMAL), env={"NEWSLETTER_DATABASE_URL": "postgresql+psycopg://u@h/db"}
    )
    assert s.database_url == "postgresql+psycopg://u@h/db"


# --- every number has a range -----------------------------------------------------------------


def numeric_fields() -> list[tuple[str, type[Any], dataclasses.Field[Any]]]:
    """(TOML table path, dataclass, field) for every int and float field under Settings."""
    found: list[tuple[str, type[Any], dataclasses.Field[Any]]] = []

    def walk(cls: type[Any], where: str) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            origin, args = get_origin(tp), get_args(tp)
            if tp in (int, float):
                found.append((where, cls, f))
            elif is_table(tp):
                walk(tp, f"{where}.{f.name}" if where else f.name)
            elif origin in (Union, types.UnionType) and is_table(args[0]):
                walk(args[0], f.name)  # an optional table: [dkim], [survey]
            elif origin is list and args and is_table(args[0]):
                walk(args[0], f"{where}.{f.name}[0]" if where else f"{f.name}[0]")
            elif origin is dict and is_table(args[1]):
                walk(args[1], f"{f.name}.s")

    walk(Settings, "")
    return found


def is_table(tp: object) -> TypeGuard[type[Any]]:
    """Whether a type hint names a dataclass (a table of config.toml)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


NUMERIC = numeric_fields()
# What a table needs besides the key under test, to load at all.
REQUIRED = {
    "smtp.fallback[0]": 'host = "relay.example.org"\n',
    "dkim": 'domain = "example.org"\nselector = "s1"\nkey_file = "dkim.pem"\n',
    "schedule.s": 'cron = "0 8 * * mon"\n',
}
# Keys that are checked against another key: that one is set out of their way.
ROOM = {
    "items.size_limit": "[issue]\nsize_limit = 10485760\n",
    "issue.size_limit": "[items]\nsize_limit = 1024\n",
}


def table_header(where: str) -> str:
    return f"[[{where.removesuffix('[0]')}]]" if where.endswith("[0]") else f"[{where}]"


def toml_number(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


def config_with(tmp_path: Path, where: str, name: str, value: float) -> Path:
    (tmp_path / "dkim.pem").write_bytes(rsa_pem(1024))  # read and checked at load
    text = MINIMAL + ROOM.get(f"{where}.{name}", "")
    text += f"\n{table_header(where)}\n{REQUIRED.get(where, '')}{name} = {toml_number(value)}\n"
    return write(tmp_path, text)


def test_every_numeric_key_has_a_range() -> None:
    # Found by walking the dataclasses: tables, optional tables, arrays and named tables.
    names = {f"{where}.{f.name}" for where, _, f in NUMERIC}
    assert len(names) == len(NUMERIC) == 50
    assert {
        "smtp.fallback[0].port",
        "dkim.processes",
        "schedule.s.min_items",
        "board.max_chars",
        "board.digest_messages",
        "bounces.threshold",
        "tracking.burst_links",
    } <= names
    for where, cls, f in NUMERIC:
        allowed = f.metadata.get("range")
        assert isinstance(allowed, config.Range), f"{where}.{f.name} ({cls.__name__}) has none"
        assert f.default is not dataclasses.MISSING, f"{where}.{f.name} has no default"
        assert allowed.allows(f.default), f"{where}.{f.name}: its default is out of its range"


@st.composite
def out_of_range(draw: st.DrawFn) -> tuple[str, str, config.Range, float]:
    where, cls, f = draw(st.sampled_from(NUMERIC))
    allowed: config.Range = f.metadata["range"]
    is_int = get_type_hints(cls)[f.name] is int
    huge = st.integers(min_value=10**19, max_value=10**40) | st.integers(
        min_value=-(10**40), max_value=-(10**19)
    )
    outside: st.SearchStrategy[float]
    if is_int:
        outside = st.integers(max_value=int(allowed.low) - 1) | st.integers(
            min_value=int(allowed.high) + 1
        )
    else:
        outside = (
            st.floats(max_value=allowed.low, exclude_max=not allowed.above, allow_nan=False)
            | st.floats(min_value=allowed.high, exclude_min=True, allow_nan=False)
            | st.sampled_from([math.nan, math.inf, -math.inf])
        )
    return where, f.name, allowed, draw(outside | huge)


@settings(max_examples=300, deadline=None)
@example(("delivery", "retry_base_seconds", config.Range(0.01, 86400), -5))
@example(("delivery", "in_flight", config.Range(1, 100_000), 99999999999999999999999))
@given(case=out_of_range())
def test_numbers_out_of_range_name_the_key_and_range(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[str, str, config.Range, float]
) -> None:
    where, name, allowed, value = case
    path = config_with(tmp_path_factory.mktemp("c"), where, name, value)
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert info.value.key == f"{where}.{name}"
    message = str(info.value)
    assert f"config key '{where}.{name}': must be " in message
    assert allowed.describe() in message
    assert "\n" not in message


def test_the_examples_of_the_issue_read_as_promised(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(config_with(tmp_path, "delivery", "retry_base_seconds", -5), env={})
    assert str(info.value) == (
        "config key 'delivery.retry_base_seconds': must be between 0.01 and 86400, got -5"
    )
    with pytest.raises(ConfigError, match="between 1 and 100000, got 99999999999999999999999"):
        config.load(config_with(tmp_path, "delivery", "in_flight", 10**23 - 1), env={})


@st.composite
def in_range(draw: st.DrawFn) -> tuple[str, str, float]:
    where, cls, f = draw(st.sampled_from(NUMERIC))
    allowed: config.Range = f.metadata["range"]
    if get_type_hints(cls)[f.name] is int:
        value: float = draw(st.integers(int(allowed.low), int(allowed.high)))
    else:
        value = draw(
            st.floats(allowed.low, allowed.high, exclude_min=allowed.above)
            | st.integers(math.ceil(allowed.low) + allowed.above, int(allowed.high))
        )
    return where, f.name, value


@settings(max_examples=300, deadline=None)
@given(case=in_range())
def test_numbers_in_range_load(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[str, str, float]
) -> None:
    where, name, value = case
    s = config.load(config_with(tmp_path_factory.mktemp("c"), where, name, value), env={})
    table: Any = s
    for part in where.split("."):
        if isinstance(table, dict):
            table = table[part]
        else:
            table = getattr(table, part.removesuffix("[0]"))
            table = table[0] if part.endswith("[0]") else table
    assert getattr(table, name) == value


# --- files that are not UTF-8, database URLs, the Subject template -------------------------


latin1_letter = st.characters(min_codepoint=0xA0, max_codepoint=0xFF)
ascii_letters = st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1)


@settings(max_examples=100, deadline=None)
@example(name="Jos\xe9")
@given(
    name=st.builds(
        lambda parts: "".join(a + b for a, b in parts),
        st.lists(st.tuples(latin1_letter, ascii_letters), min_size=1, max_size=5),
    )
)
def test_config_in_latin1_names_the_line_and_column(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> None:
    # Each Latin-1 letter is followed by an ASCII one, so its byte is the first that is not
    # UTF-8: a lead byte without its continuation, or a continuation without its lead.
    text = MINIMAL.replace('name = "Test"', f'name = "{name}"')
    path = tmp_path_factory.mktemp("c") / "config.toml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    column = len('name = "') + next(i for i, c in enumerate(name) if not c.isascii()) + 1
    assert info.value.key == str(path)
    assert f"not UTF-8 text: byte 0x{ord(name[column - 9]):02x} at line 3, column {column}" in str(
        info.value
    )


def test_config_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert config.load(path, env={}).list.name == "Test"


UNSUPPORTED = ["mysql", "mysql+pymysql", "mariadb", "oracle", "mssql+pyodbc", "postgresql",
               "postgres", "postgresql+psycopg2", "postgresql+asyncpg", "sqlite+aiosqlite",
               "made-up"]  # fmt: skip


@settings(max_examples=100, deadline=None)
@example(scheme="mysql", rest="user:hunter2@db.example.org/news", from_env=False)
@given(
    scheme=st.sampled_from(UNSUPPORTED),
    rest=st.from_regex(r"\A([a-z]{1,8}:hunter2@)?[a-z]{1,10}(:[0-9]{2,4})?/[a-z]{1,8}\Z"),
    from_env=st.booleans(),
)
def test_unsupported_database_urls_are_config_errors(
    tmp_path_factory: pytest.TempPathFactory, scheme: str, rest: str, from_env: bool
) -> None:
    url = f"{scheme}://{rest}"
    text = MINIMAL if from_env else MINIMAL + f'\n[database]\nurl = "{url}"\n'
    path = write(tmp_path_factory.mktemp("c"), text)
    with pytest.raises(ConfigError) as info:
        config.load(path, env={"NEWSLETTER_DATABASE_URL": url} if from_env else {})
    assert info.value.key == "database.url"
    assert "hunter2" not in str(info.value)
    assert "postgresql+psycopg://" in str(info.value)
    assert ("NEWSLETTER_DATABASE_URL" in str(info.value)) == from_env


def test_supported_database_urls_load(tmp_path: Path) -> None:
    for url in ("sqlite:///var/x.db", "sqlite+pysqlite:///x.db", "postgresql+psycopg://u@h/db"):
        config.load(write(tmp_path, MINIMAL + f'\n[database]\nurl = "{url}"\n'), env={})
    with pytest.raises(ConfigError, match="port must be between 1 and 65535"):
        config.load(write(tmp_path, MINIMAL), env={DATABASE: "postgresql+psycopg://h:99999/db"})
    with pytest.raises(DatabaseError, match="'mysql' databases are not supported"):
        db.make_engine("mysql://u:hunter2@h/db")


DATABASE = "NEWSLETTER_DATABASE_URL"
SUBJECT_PIECES = ["{{", "}}", "{%", "%}", "{#", "#}", " list_name ", " first_title ",
                  " item_count ", " date ", " frist_title ", "|upper", "|e", "|length", ".year",
                  "[0]", "[99]", "(", ")", "'", '"', " if ", " else ", "endif", " ~ ", "+ 1",
                  ": ", "News & views ", "<b>"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@example(subject="{{ list_name }: {{ first_title }}", titles=["x"])
@example(subject="{{ frist_title }}", titles=["x"])
@example(subject="{{ first_title[99] }}", titles=["short"])
@example(subject="{{ list_name }}: {{ first_title }}", titles=["Login & sessions"])
@given(
    subject=st.lists(st.sampled_from(SUBJECT_PIECES), max_size=12).map("".join),
    titles=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=3),
)
def test_subject_template_is_checked_when_the_config_loads(
    tmp_path_factory: pytest.TempPathFactory, subject: str, titles: list[str]
) -> None:
    path = write(tmp_path_factory.mktemp("c"), MINIMAL + f"subject = {json.dumps(subject)}\n")
    s = load_or_refusal(path)
    if isinstance(s, ConfigError):
        assert s.key == "list.subject"
        assert "\n" not in str(s)
        return
    env = environment(s.site_dir)
    items = [ItemView(i, t, "News", "", Markup(""), t, None) for i, t in enumerate(titles, start=1)]
    # A template that passed the check may still fail on some titles (an index past the end
    # of a short one); that is a config error naming the key, never anything else.
    rendered = render_or_refusal(env, s, items)
    if isinstance(rendered, HeaderError):
        return  # a title with a line break: refused as a header, as before
    if isinstance(rendered, ConfigError):
        assert rendered.key == "list.subject"
        return
    assert isinstance(rendered, str)


def load_or_refusal(path: Path) -> Settings | ConfigError:
    """The settings, or the error that refused them."""
    try:
        return config.load(path, env={})
    except ConfigError as exc:
        return exc


def render_or_refusal(
    env: Environment, s: Settings, items: list[ItemView]
) -> str | ConfigError | HeaderError:
    """The Subject, or the error that refused it."""
    try:
        return render_subject(env, s, items, dt.date(2017, 12, 6))
    except (ConfigError, HeaderError) as exc:
        return exc


def test_subject_errors_read_clearly(tmp_path: Path) -> None:
    for subject, message in [
        ("{{ list_name }: {{ first_title }}", "not a valid Jinja2 template: unexpected '}'"),
        ("{{ frist_title }}", "unknown name 'frist_title' (a subject may use list_name, first"),
        ("{{ date.nope }}", "the template fails: UndefinedError"),
    ]:
        with pytest.raises(ConfigError) as info:
            config.load(write(tmp_path, MINIMAL + f"subject = {json.dumps(subject)}\n"), env={})
        assert info.value.key == "list.subject", str(info.value)
        assert message in str(info.value), str(info.value)


# --- the command line: exit code 2 and one line ----------------------------------------------


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t.replace("retry_base_seconds = 60.0", "retry_base_seconds = -5"), "delivery.retry_base_seconds"),
        (lambda t: t.replace("in_flight = 200", "in_flight = 99999999999999999999999"), "delivery.in_flight"),
        (lambda t: t.replace('url = "sqlite:///var/newsletter.db"', 'url = "mysql://u:pw@db/news"'), "database.url"),
        (lambda t: t.replace('subject = "{{ list_name }}: {{ first_title }}"', 'subject = "{{ list_name }: x"'), "list.subject"),
        (lambda t: t.replace("China IP", "Chin\xe4 IP"), "config.toml"),
    ],
)  # fmt: skip
def test_bad_config_exits_2_with_one_line(
    site: Path, change: Callable[[str], str], key: str
) -> None:
    path = site / "config.toml"
    text = change(path.read_text(encoding="utf-8"))
    # The sample's em dash has no Latin-1 byte; "?" stands in for it, as an editor would.
    path.write_bytes(text.encode("latin-1" if key == "config.toml" else "utf-8", "replace"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "items", "list"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: config key ")
    assert key in line
    assert not (site / "var" / "newsletter.db").exists()  # refused before the database
