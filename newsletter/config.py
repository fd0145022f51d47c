"""config.toml + NEWSLETTER_* environment → typed, frozen settings; the only reader of files and env."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import tomllib
import types
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import jinja2
import jinja2.meta
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from newsletter import i18n
from newsletter.deliverability import mail_problems
from newsletter.errors import ConfigError, MissingSecret

SUPPORTED = "sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DATABASE"


def url_problem(url: str) -> str | None:
    """What is wrong with a database URL, before any driver is imported; None if nothing.

    Only the two databases the migrations are written for, through the drivers this package
    installs: anything else would fail later with a driver's ImportError.
    """
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError):
        return f"not a database URL; use {SUPPORTED}"
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and (backend, driver) != ("postgresql", "psycopg"):
        return (
            "PostgreSQL is reached through psycopg 3, so the URL must start with "
            f"postgresql+psycopg://, not {parsed.drivername}://"
        )
    if (backend, driver) not in (("sqlite", ""), ("sqlite", "pysqlite"), ("postgresql", "psycopg")):
        return f"{parsed.drivername!r} databases are not supported; use {SUPPORTED}"
    if port is not None and not 1 <= port <= 65535:
        return f"the port must be between 1 and 65535, got {port}"
    return None


ENV_PREFIX = "NEWSLETTER_"
SECRET_ENV = "NEWSLETTER_SECRET_KEY"
SECRET_FILE_ENV = "NEWSLETTER_SECRET_KEY_FILE"
OLD_SECRETS_ENV = "NEWSLETTER_OLD_SECRET_KEYS"
SMTP_PASSWORD_ENV = "NEWSLETTER_SMTP_PASSWORD"
API_TOKEN_ENV = "NEWSLETTER_API_TOKEN"
WRITER_TOKEN_ENV = "NEWSLETTER_API_TOKEN_WRITER"
DATABASE_URL_ENV = "NEWSLETTER_DATABASE_URL"
IMAP_PASSWORD_ENV = "NEWSLETTER_IMAP_PASSWORD"
POSTMARK_PASSWORD_ENV = "NEWSLETTER_POSTMARK_PASSWORD"

T = TypeVar("T")
KB, MB = 1024, 1024 * 1024
DAY = 86400


@dataclass(frozen=True, slots=True)
class Range:
    """The values a numeric key may take: low to high, both included (low excluded if `above`)."""

    low: float
    high: float
    above: bool = False

    def allows(self, value: float) -> bool:
        # NaN compares false with everything, so it fails here too.
        low_ok = value > self.low if self.above else value >= self.low
        return low_ok and value <= self.high

    def describe(self) -> str:
        if self.above:
            return f"more than {_number(self.low)} and at most {_number(self.high)}"
        return f"between {_number(self.low)} and {_number(self.high)}"


def between(default: T, low: float, high: float, *, above: bool = False) -> T:
    """A numeric field's default and its allowed range, checked when config.toml is loaded."""
    result: T = field(default=default, metadata={"range": Range(low, high, above)})
    return result


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclass(frozen=True, slots=True)
class ListWords:
    """[list.translations.CODE]: the list's name and Subject template in another language
    (empty: the [list] table's own)."""

    name: str = ""
    subject: str = ""


@dataclass(frozen=True, slots=True)
class ListSettings:
    name: str
    id: str
    from_address: str
    base_url: str
    return_path: str = ""
    reply_to: str = ""
    subject: str = "{{ list_name }}: {{ first_title }}"
    language: str = "en"
    # The time zone of times editors read and set (a scheduled send), e.g. "Asia/Shanghai".
    timezone: str = "UTC"
    # The sender's postal address, shown in every message's footer (CAN-SPAM asks for one).
    postal_address: str = ""
    translations: dict[str, ListWords] = field(default_factory=dict)

    def name_in(self, language: str) -> str:
        words = self.translations.get(language)
        return words.name if words and words.name else self.name

    def subject_in(self, language: str) -> str:
        words = self.translations.get(language)
        return words.subject if words and words.subject else self.subject


@dataclass(frozen=True, slots=True)
class WordingSettings:
    """The words the shipped templates use for what a site sends, so that a site speaks of
    its own kind of news. Empty (the default): the translation catalog's neutral words, in
    each member's language; set, they are used as written for the list's own language."""

    item: str = ""  # one item: "1 report" in an issue's masthead (default "1 article")
    items: str = ""  # several: "3 reports" (default "3 articles")
    read_more: str = ""  # the link under each item to its full text (default "Read more")
    tagline: str = ""  # the home page's line under the list name (default "News by email.")
    search_placeholder: str = ""  # the example in the search box (default "A word or a phrase")


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = "sqlite:///var/newsletter.db"


@dataclass(frozen=True, slots=True)
class RelaySettings:
    host: str
    port: int = between(25, 1, 65535)
    security: Literal["none", "starttls", "tls"] = "none"
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = between(8025, 1, 65535)
    security: Literal["none", "starttls", "tls"] = "none"
    user: str = ""
    timeout: float = between(30.0, 0.1, 3600)
    connections: int = between(4, 1, 1000)
    rate_per_second: float = between(0.0, 0, 100_000)  # 0: no limit
    rate_per_hour: int = between(0, 0, 1_000_000_000)  # 0: no limit
    idle_timeout: float = between(30.0, 0, DAY)
    messages_per_connection: int = between(0, 0, 10_000_000)  # 0: never reopen
    fallback: list[RelaySettings] = field(default_factory=list)
    password: str = field(default="", repr=False)

    @property
    def relays(self) -> list[RelaySettings]:
        """The primary relay, then the fallbacks, in failover order."""
        primary = RelaySettings(self.host, self.port, self.security, self.user, self.password)
        return [primary, *self.fallback]


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    in_flight: int = between(200, 1, 100_000)
    commit_every: int = between(50, 1, 100_000)
    recheck_ms: int = between(50, 1, 60_000)
    # Small values are for tests; below 0.01 s a retry would spin (and 2**n of a huge base
    # overflows a float).
    retry_base_seconds: float = between(60.0, 0.01, DAY)
    retry_max_seconds: float = between(6 * 3600.0, 0.01, 30 * DAY)
    retry_deadline_hours: float = between(72.0, 0.01, 366 * 24)
    linger_seconds: float = between(120.0, 0, DAY)
    bounce_threshold: int = between(2, 1, 1000)
    pause_after: int = between(10, 1, 1_000_000)
    lease_seconds: float = between(300.0, 0.1, DAY)
    verp: bool = True


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = between(8000, 1, 65535)
    vote_window_seconds: float = between(30.0, 0, DAY)
    delivery_grace_seconds: float = between(60.0, 0, DAY)
    # The desk's login throttle: attempts (counted before the password is checked) from one
    # client address, and against one editor name, within login_window_seconds.
    login_attempts_per_address: int = between(10, 1, 10_000)
    login_attempts_per_name: int = between(30, 1, 100_000)
    login_window_seconds: float = between(900.0, 1, DAY)


@dataclass(frozen=True, slots=True)
class BouncesSettings:
    # Mailman's scoring: a hard bounce adds 1, a soft one 0.5, at most once a day; at the
    # threshold the member is suppressed; the score lapses after quiet_days without one.
    threshold: float = between(5.0, 0.5, 1000)
    quiet_days: float = between(7.0, 0.01, 3650)
    # `newsletter bounces serve`: the SMTP receiver of the bounce domain.
    host: str = "127.0.0.1"
    port: int = between(8026, 1, 65535)
    max_bytes: int = between(10 * MB, 1 * KB, 100 * MB)
    # `newsletter bounces fetch`: an IMAP mailbox (the password from NEWSLETTER_IMAP_PASSWORD).
    imap_host: str = ""
    imap_port: int = between(993, 1, 65535)
    imap_security: Literal["tls", "starttls", "none"] = "tls"
    imap_user: str = ""
    imap_folder: str = "INBOX"
    imap_done_folder: str = "Processed"
    # Webhooks: the SNS topics whose SES notifications are taken (empty: SES's hook is off),
    # and Postmark's basic-auth user (its password from NEWSLETTER_POSTMARK_PASSWORD).
    ses_topics: list[str] = field(default_factory=list)
    postmark_user: str = ""


@dataclass(frozen=True, slots=True)
class TrackingSettings:
    # Links of items and the footer go through /r/TOKEN, counted per issue and link.
    clicks: bool = True
    # Keep a row per member and click (who clicked what); off: only counts remain.
    per_member: bool = False
    # A member fetching this many different links of an issue within burst_seconds is a
    # scanner (a person opens one or two).
    burst_links: int = between(3, 2, 1000)
    burst_seconds: float = between(10.0, 0.1, 3600)


@dataclass(frozen=True, slots=True)
class DkimSettings:
    domain: str
    selector: str
    key_file: str
    processes: int = between(0, 0, 256)  # signing processes; 0 means one per CPU core


@dataclass(frozen=True, slots=True)
class SinkSettings:
    outbox: str = "var/outbox"


@dataclass(frozen=True, slots=True)
class IssueSettings:
    max_items: int = between(50, 1, 10_000)
    size_limit: int = between(100 * KB, 1 * KB, 10 * MB)
    preview_dir: str = "var/preview"
    sections: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ItemsSettings:
    # The largest body one item may have, in bytes of sanitised HTML (a Markdown file: also
    # its size on disk). An item larger than an issue could carry would block every issue.
    size_limit: int = between(64 * KB, 1 * KB, 10 * MB)


@dataclass(frozen=True, slots=True)
class SurveyWords:
    """[survey.translations.CODE]: the question and the options in another language."""

    question: str
    options: list[str]


@dataclass(frozen=True, slots=True)
class SurveySettings:
    key: str
    question: str
    options: list[str]
    translations: dict[str, SurveyWords] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    cron: str
    timezone: str = "UTC"
    min_items: int = between(1, 0, 10_000)
    survey: Literal["open", "none"] = "open"
    # APScheduler wants a positive number of seconds.
    misfire_grace_seconds: int = between(3600, 1, 31 * DAY)


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    # How often (seconds) a standby `serve` tries to become the leader, and the leader checks
    # that it still is; a SQLite lease lasts three times this.
    check_seconds: float = between(5.0, 0, 3600, above=True)


@dataclass(frozen=True, slots=True)
class EditorSettings:
    name: str
    password_hash: str
    # "publisher" may do everything on the desk; "writer" writes, previews and tests, but
    # may not send, schedule, manage members or surveys.
    role: Literal["publisher", "writer"] = "publisher"


@dataclass(frozen=True, slots=True)
class BoardSettings:
    """The members' board (docs/board.md)."""

    # "public": anyone reads the board (and finds it in search); "members": signed-in members.
    read: Literal["public", "members"] = "public"
    # A message's length in characters of Markdown, and how many links it may carry.
    max_chars: int = between(4000, 1, 100_000)
    max_links: int = between(3, 0, 100)
    # A member's first posts wait for an editor's approval; 0 shows every post at once.
    held_posts: int = between(1, 0, 1000)
    # Posts a member, and a network address, may make in an hour.
    posts_per_hour: int = between(10, 1, 100_000)
    posts_per_ip_hour: int = between(30, 1, 10_000_000)
    # Members whose reports take a message off the board until an editor looks.
    report_threshold: int = between(3, 1, 1000)
    # Minutes a member may edit or delete their own message after posting it.
    edit_minutes: int = between(15, 0, 1440)
    # Minutes a sign-in link lasts (it works once), and days a session lasts.
    signin_minutes: int = between(15, 1, 1440)
    session_days: int = between(30, 1, 366)
    # Days an issue's link to the board signs its member in.
    issue_link_days: int = between(30, 1, 366)
    # Threads on one page of the board.
    page_size: int = between(20, 1, 200)
    # Mail a member when someone replies to their message (at most one a thread a day).
    reply_notices: bool = True
    # Messages the next issue carries in "From the members' board"; 0 leaves the section out.
    digest_messages: int = between(5, 0, 50)


# Named here because inside Settings the name `list` is the [list] table's field.
Editors = list[EditorSettings]


def _no_editors() -> Editors:
    return []


@dataclass(frozen=True, slots=True)
class Settings:
    list: ListSettings
    wording: WordingSettings = field(default_factory=WordingSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    dkim: DkimSettings | None = None
    web: WebSettings = field(default_factory=WebSettings)
    bounces: BouncesSettings = field(default_factory=BouncesSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    editor: Editors = field(default_factory=_no_editors)
    sink: SinkSettings = field(default_factory=SinkSettings)
    issue: IssueSettings = field(default_factory=IssueSettings)
    items: ItemsSettings = field(default_factory=ItemsSettings)
    survey: SurveySettings | None = None
    schedule: dict[str, ScheduleSettings] = field(default_factory=dict)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    board: BoardSettings = field(default_factory=BoardSettings)
    site_dir: Path = Path(".")
    config_path: Path = Path("config.toml")
    secret_keys: tuple[bytes, ...] = field(default=(), repr=False)
    api_token: str = field(default="", repr=False)
    writer_api_token: str = field(default="", repr=False)
    imap_password: str = field(default="", repr=False)
    postmark_password: str = field(default="", repr=False)

    def path(self, relative: str) -> Path:
        """Resolve a path from the config against the site folder."""
        p = Path(relative)
        return p if p.is_absolute() else self.site_dir / p

    def require_secret(self) -> tuple[bytes, ...]:
        """The signing keys, newest first; raises MissingSecret when none is configured."""
        if not self.secret_keys:
            raise MissingSecret(
                "secret_key", SECRET_ENV, "no signing key for member links is configured"
            )
        return self.secret_keys

    @property
    def database_url(self) -> str:
        return _resolve_sqlite_url(self.database.url, self.site_dir)


# Keys that may not appear in config.toml because they are secrets.
_ENV_ONLY = {"smtp.password": SMTP_PASSWORD_ENV}


def load(
    path: Path | str = "config.toml",
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    mail_checks: bool = True,
) -> Settings:
    """Read config.toml (plus overrides, a nested dict) and the environment into Settings.

    `mail_checks=False` loads a site whose domains or DKIM key mailbox providers would
    refuse (`newsletter doctor` does, to list every such problem with mail_problems).
    """
    path = Path(path)
    env = os.environ if env is None else env
    raw = _read_toml(path)
    if overrides:
        raw = _merge(raw, overrides)
    _refuse_secrets(raw)
    url_from_env = DATABASE_URL_ENV in env
    if url_from_env:
        raw.setdefault("database", {})["url"] = env[DATABASE_URL_ENV]
    raw.setdefault("smtp", {})
    _add_smtp_passwords(raw["smtp"], env)

    settings: Settings = _build(
        Settings,
        raw,
        "",
        skip={
            "site_dir",
            "config_path",
            "secret_keys",
            "api_token",
            "writer_api_token",
            "imap_password",
            "postmark_password",
        },
    )
    settings = dataclasses.replace(
        settings,
        site_dir=path.resolve().parent,
        config_path=path.resolve(),
        secret_keys=_secret_keys(env, path.resolve().parent),
        api_token=env.get(API_TOKEN_ENV, ""),
        writer_api_token=env.get(WRITER_TOKEN_ENV, ""),
        imap_password=env.get(IMAP_PASSWORD_ENV, ""),
        postmark_password=env.get(POSTMARK_PASSWORD_ENV, ""),
    )
    _validate(settings, mail_checks)
    problem = url_problem(settings.database.url)
    if problem:
        where = f" (from {DATABASE_URL_ENV})" if url_from_env else ""
        raise ConfigError("database.url", problem + where)
    return settings


def _refuse_secrets(raw: dict[str, Any]) -> None:
    for dotted, var in _ENV_ONLY.items():
        section, key = dotted.split(".")
        if key in raw.get(section, {}):
            raise ConfigError(dotted, f"secrets do not belong in config.toml; set {var} instead")


def _add_smtp_passwords(smtp: dict[str, Any], env: Mapping[str, str]) -> None:
    """The relays' passwords from the environment: the primary's, then fallback N's from _N."""
    password = env.get(SMTP_PASSWORD_ENV, "")
    if password:
        smtp["password"] = password
    for index, relay in enumerate(smtp.get("fallback", []), start=1):
        if isinstance(relay, dict):
            if "password" in relay:
                raise ConfigError(
                    f"smtp.fallback[{index - 1}].password",
                    f"secrets do not belong in config.toml; set {SMTP_PASSWORD_ENV}_{index} instead",
                )
            if env.get(f"{SMTP_PASSWORD_ENV}_{index}"):
                relay["password"] = env[f"{SMTP_PASSWORD_ENV}_{index}"]


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; a file that is missing, not UTF-8 or not TOML says where."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            str(path), "config file not found (use --config PATH or `newsletter init`)"
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the file: {exc.strerror}") from None
    try:
        # A BOM (as Windows editors write) is not part of TOML; it is dropped.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            str(path),
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column {column}; "
            "save the file as UTF-8",
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _secret_keys(env: Mapping[str, str], site_dir: Path) -> tuple[bytes, ...]:
    current = env.get(SECRET_ENV, "")
    if not current and env.get(SECRET_FILE_ENV):
        key_file = Path(env[SECRET_FILE_ENV])
        if not key_file.is_absolute():
            key_file = site_dir / key_file
        try:
            current = key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                "secret_key", f"{SECRET_FILE_ENV}={key_file}: {exc.strerror}"
            ) from None
    keys = [current] if current else []
    keys += [k.strip() for k in env.get(OLD_SECRETS_ENV, "").split(",") if k.strip()]
    for k in keys:
        if len(k) < 16:
            raise ConfigError("secret_key", "a signing key must be at least 16 characters long")
    return tuple(k.encode() for k in keys)


def _resolve_sqlite_url(url: str, site_dir: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str(site_dir / url[len(prefix) :])
    return url


_ADDRESS = re.compile(r"^[^\s@<>]+@[^\s@<>]+\.[^\s@<>]+$")


def _validate(s: Settings, mail_checks: bool = True) -> None:
    """What the types alone do not say, table by table; the first problem found is raised."""
    _check_list(s.list)
    _check_wording(s.wording)
    _check_smtp(s.smtp)
    if mail_checks:
        for problem in mail_problems(s):
            raise problem
    _check_sizes(s.items, s.issue)
    if s.survey is not None:
        _check_survey(s.survey)
    if s.api_token and len(s.api_token) < 24:
        raise ConfigError("api_token", f"{API_TOKEN_ENV} must be at least 24 characters long")
    if s.writer_api_token and len(s.writer_api_token) < 24:
        raise ConfigError("api_token", f"{WRITER_TOKEN_ENV} must be at least 24 characters long")
    if s.writer_api_token and s.writer_api_token == s.api_token:
        raise ConfigError("api_token", f"{WRITER_TOKEN_ENV} must differ from {API_TOKEN_ENV}")
    _check_editors(s.editor)
    _check_schedules(s.schedule)
    _check_bounces(s)


def _check_list(lst: ListSettings) -> None:
    if not lst.base_url.startswith(("http://", "https://")):
        raise ConfigError("list.base_url", "must start with https:// (or http:// on loopback)")
    if not _ADDRESS.match(lst.from_address):
        raise ConfigError("list.from_address", f"not an email address: {lst.from_address!r}")
    for key in ("return_path", "reply_to"):
        value = getattr(lst, key)
        if value and not _ADDRESS.match(value):
            raise ConfigError(f"list.{key}", f"not an email address: {value!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", lst.id):
        raise ConfigError("list.id", "must be a dotted name such as news.example.org (RFC 2919)")
    for key in ("name", "subject", "postal_address"):
        if re.search(r"[\r\n\x00]", getattr(lst, key)):
            raise ConfigError(f"list.{key}", "must not contain line breaks")
    check_subject(lst.subject)
    _check_language("list.language", lst.language, exact=True)
    _check_list_words(lst.translations)
    try:
        zoneinfo.ZoneInfo(lst.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            "list.timezone", f"{lst.timezone!r} is not a time zone (e.g. UTC, Asia/Shanghai)"
        ) from None


def _check_list_words(translations: dict[str, ListWords]) -> None:
    for code, words in translations.items():
        where = f"list.translations.{code}"
        _check_language(where, code, exact=True)
        for key in ("name", "subject"):
            if re.search(r"[\r\n\x00]", getattr(words, key)):
                raise ConfigError(f"{where}.{key}", "must not contain line breaks")
        if words.subject:
            check_subject(words.subject, f"{where}.subject")


def _check_wording(wording: WordingSettings) -> None:
    for key in ("item", "items", "read_more", "tagline", "search_placeholder"):
        value = getattr(wording, key)
        if len(value) > 200 or re.search(r"[\r\n\x00]", value):
            raise ConfigError(
                f"wording.{key}",
                f"must be one line of at most 200 characters (empty: the catalog's), got {value!r}",
            )
    if bool(wording.item) != bool(wording.items):
        raise ConfigError("wording.item", "set both wording.item and wording.items, or neither")


def _check_smtp(smtp: SmtpSettings) -> None:
    """A relay with a user needs its password (from the environment)."""
    if smtp.user and not smtp.password:
        raise MissingSecret("smtp.password", SMTP_PASSWORD_ENV, f"smtp.user is {smtp.user!r}")
    for i, relay in enumerate(smtp.fallback):
        if relay.user and not relay.password:
            raise MissingSecret(
                f"smtp.fallback[{i}].password",
                f"{SMTP_PASSWORD_ENV}_{i + 1}",
                f"the relay's user is {relay.user!r}",
            )


def _check_sizes(items: ItemsSettings, issue: IssueSettings) -> None:
    if items.size_limit > issue.size_limit:
        raise ConfigError(
            "items.size_limit",
            f"must not be more than issue.size_limit ({issue.size_limit}), since a larger "
            f"item could never go out, got {items.size_limit}",
        )


def _check_survey(survey: SurveySettings) -> None:
    if not survey.options or len(survey.options) > 20:
        raise ConfigError("survey.options", "needs between 1 and 20 options")
    if len(set(survey.options)) != len(survey.options):
        raise ConfigError("survey.options", "options must be distinct")
    for code, words in survey.translations.items():
        where = f"survey.translations.{code}"
        _check_language(where, code, exact=True)
        if len(words.options) != len(survey.options):
            raise ConfigError(
                f"{where}.options",
                f"needs {len(survey.options)} options, one for each of survey.options, "
                f"got {len(words.options)}",
            )


def _check_language(where: str, code: str, *, exact: bool = False) -> None:
    """A language there is a catalog for (newsletter/locale); `exact`: spelled as its code."""
    known = i18n.normalize(code)
    if known is None or (exact and known != code):
        raise ConfigError(
            where, f"{code!r} is not a language we have (one of: {', '.join(i18n.languages())})"
        )


def _check_bounces(s: Settings) -> None:
    b = s.bounces
    if b.postmark_user and len(s.postmark_password) < 16:
        raise MissingSecret(
            "bounces.postmark_user",
            POSTMARK_PASSWORD_ENV,
            "Postmark's webhook needs a password of 16 characters or more",
        )
    for i, topic in enumerate(b.ses_topics):
        if not re.fullmatch(r"arn:aws[\w-]*:sns:[\w-]+:\d{12}:[\w-]{1,256}", topic):
            raise ConfigError(
                f"bounces.ses_topics[{i}]",
                f"not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME): {topic!r}",
            )
    if re.search(r"[\r\n\x00]", b.imap_folder + b.imap_done_folder + b.imap_user):
        raise ConfigError("bounces.imap_folder", "must not contain line breaks")


def _check_editors(editors: Editors) -> None:
    for i, editor in enumerate(editors):
        if not editor.password_hash.startswith("scrypt$"):
            raise ConfigError(
                f"editor[{i}].password_hash", "make one with `newsletter editor hash-password`"
            )


def _check_schedules(schedules: dict[str, ScheduleSettings]) -> None:
    for name, sched in schedules.items():
        if len(sched.cron.split()) not in (5, 6):
            raise ConfigError(
                f"schedule.{name}.cron",
                "needs 5 fields (min hour day month weekday) or 6 (with seconds first)",
            )


# The names a Subject template may use; compiler.render_subject passes exactly these.
SUBJECT_NAMES = ("list_name", "first_title", "item_count", "date")


def check_subject(source: str, key: str = "list.subject") -> None:
    """Refuse a Subject template that would fail at send time: bad syntax, unknown names."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        unknown = jinja2.meta.find_undeclared_variables(env.parse(source)) - set(SUBJECT_NAMES)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            key, f"not a valid Jinja2 template: {exc.message} (line {exc.lineno})"
        ) from None
    if unknown:
        raise ConfigError(
            key,
            f"unknown name {sorted(unknown)[0]!r} (a subject may use {', '.join(SUBJECT_NAMES)})",
        )
    sample = {"list_name": "List", "first_title": "Title", "item_count": 1, "date": dt.date.today()}
    try:
        env.from_string(source).render(sample)
    # A template is code: whatever it raises on sample values, it would raise when sending.
    except Exception as exc:  # noqa: BLE001 - any error of the template's is the config's error
        raise ConfigError(key, f"the template fails: {exc.__class__.__name__}: {exc}") from None


# --- a small typed builder: dict from TOML → frozen dataclasses, naming the key on any error ---

_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _build(cls: type[Any], data: Any, where: str, skip: set[str] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(where or "(top level)", "expected a table")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in (skip or set())}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(f for f in fields if f != "password"))
            raise ConfigError(_join(where, key), f"unknown key (known keys here: {known})")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(dotted, "missing")
            continue
        kwargs[name] = _coerce(hints[name], data[name], dotted)
        allowed = f.metadata.get("range")
        if allowed is not None:
            _check_range(allowed, kwargs[name], data[name], dotted)
    return cls(**kwargs)


def _check_range(allowed: Range, value: float, raw: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(where, f"must be a finite number {allowed.describe()}, got {raw!r}")
    if not allowed.allows(value):
        raise ConfigError(where, f"must be {allowed.describe()}, got {raw!r}")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(args[0], value, where)
    if origin is Literal:
        return _choice(get_args(tp), value, where)
    if origin is list:
        (item_tp,) = get_args(tp)
        return _list_of(item_tp, value, where)
    if origin is dict:
        _, val_tp = get_args(tp)
        return _table_of(val_tp, value, where)
    if dataclasses.is_dataclass(tp):
        return _build(cast(type[Any], tp), value, where)
    return _scalar(tp, value, where)


def _choice(choices: tuple[Any, ...], value: Any, where: str) -> Any:
    if value not in choices:
        raise ConfigError(where, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _list_of(item_tp: Any, value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(where, f"expected a list, got {value!r}")
    return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]


def _table_of(val_tp: Any, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(where, "expected a table")
    return {k: _coerce(val_tp, v, _join(where, k)) for k, v in value.items()}


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in _TYPE_WORDS:
        if type(value) is not tp:
            raise ConfigError(where, f"expected {_TYPE_WORDS[tp]}, got {value!r}")
        return value
    raise ConfigError(where, f"unsupported type {tp!r}")  # pragma: no cover - a bug in this module


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
