"""config.toml + NEWSLETTER_* environment → typed, frozen settings; the only reader of files and env."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, cast, get_args, get_origin, get_type_hints

from newsletter.errors import ConfigError, MissingSecret

ENV_PREFIX = "NEWSLETTER_"
SECRET_ENV = "NEWSLETTER_SECRET_KEY"
SECRET_FILE_ENV = "NEWSLETTER_SECRET_KEY_FILE"
OLD_SECRETS_ENV = "NEWSLETTER_OLD_SECRET_KEYS"
SMTP_PASSWORD_ENV = "NEWSLETTER_SMTP_PASSWORD"
API_TOKEN_ENV = "NEWSLETTER_API_TOKEN"
DATABASE_URL_ENV = "NEWSLETTER_DATABASE_URL"


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


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = "sqlite:///var/newsletter.db"


@dataclass(frozen=True, slots=True)
class RelaySettings:
    host: str
    port: int = 25
    security: Literal["none", "starttls", "tls"] = "none"
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 8025
    security: Literal["none", "starttls", "tls"] = "none"
    user: str = ""
    timeout: float = 30.0
    connections: int = 4
    rate_per_second: float = 0.0
    rate_per_hour: int = 0
    idle_timeout: float = 30.0
    messages_per_connection: int = 0
    fallback: list[RelaySettings] = field(default_factory=list)
    password: str = field(default="", repr=False)

    @property
    def relays(self) -> list[RelaySettings]:
        """The primary relay, then the fallbacks, in failover order."""
        primary = RelaySettings(self.host, self.port, self.security, self.user, self.password)
        return [primary, *self.fallback]


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    in_flight: int = 200
    commit_every: int = 50
    recheck_ms: int = 50
    retry_base_seconds: float = 60.0
    retry_max_seconds: float = 6 * 3600.0
    retry_deadline_hours: float = 72.0
    linger_seconds: float = 120.0
    bounce_threshold: int = 2
    pause_after: int = 10
    lease_seconds: float = 300.0
    verp: bool = True


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    vote_window_seconds: float = 30.0
    delivery_grace_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class DkimSettings:
    domain: str
    selector: str
    key_file: str
    processes: int = 0  # signing processes; 0 means one per CPU core


@dataclass(frozen=True, slots=True)
class SinkSettings:
    outbox: str = "var/outbox"


@dataclass(frozen=True, slots=True)
class IssueSettings:
    max_items: int = 50
    size_limit: int = 100 * 1024
    preview_dir: str = "var/preview"
    sections: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SurveySettings:
    key: str
    question: str
    options: list[str]


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    cron: str
    timezone: str = "UTC"
    min_items: int = 1
    survey: Literal["open", "none"] = "open"
    misfire_grace_seconds: int = 3600


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    # How often (seconds) a standby `serve` tries to become the leader, and the leader checks
    # that it still is; a SQLite lease lasts three times this.
    check_seconds: float = 5.0


@dataclass(frozen=True, slots=True)
class EditorSettings:
    name: str
    password_hash: str


# Named here because inside Settings the name `list` is the [list] table's field.
Editors = list[EditorSettings]


def _no_editors() -> Editors:
    return []


@dataclass(frozen=True, slots=True)
class Settings:
    list: ListSettings
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    dkim: DkimSettings | None = None
    web: WebSettings = field(default_factory=WebSettings)
    editor: Editors = field(default_factory=_no_editors)
    sink: SinkSettings = field(default_factory=SinkSettings)
    issue: IssueSettings = field(default_factory=IssueSettings)
    survey: SurveySettings | None = None
    schedule: dict[str, ScheduleSettings] = field(default_factory=dict)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    site_dir: Path = Path(".")
    config_path: Path = Path("config.toml")
    secret_keys: tuple[bytes, ...] = field(default=(), repr=False)
    api_token: str = field(default="", repr=False)

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
) -> Settings:
    """Read config.toml (plus overrides, a nested dict) and the environment into Settings."""
    path = Path(path)
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            str(path), "config file not found (use --config PATH or `newsletter init`)"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    if overrides:
        raw = _merge(raw, overrides)
    for dotted, var in _ENV_ONLY.items():
        section, key = dotted.split(".")
        if key in raw.get(section, {}):
            raise ConfigError(dotted, f"secrets do not belong in config.toml; set {var} instead")
    if DATABASE_URL_ENV in env:
        raw.setdefault("database", {})["url"] = env[DATABASE_URL_ENV]
    password = env.get(SMTP_PASSWORD_ENV, "")
    raw.setdefault("smtp", {})
    if password:
        raw["smtp"]["password"] = password

    for index, relay in enumerate(raw["smtp"].get("fallback", []), start=1):
        if isinstance(relay, dict):
            if "password" in relay:
                raise ConfigError(
                    f"smtp.fallback[{index - 1}].password",
                    f"secrets do not belong in config.toml; set {SMTP_PASSWORD_ENV}_{index} instead",
                )
            if env.get(f"{SMTP_PASSWORD_ENV}_{index}"):
                relay["password"] = env[f"{SMTP_PASSWORD_ENV}_{index}"]

    settings: Settings = _build(
        Settings, raw, "", skip={"site_dir", "config_path", "secret_keys", "api_token"}
    )
    settings = dataclasses.replace(
        settings,
        site_dir=path.resolve().parent,
        config_path=path.resolve(),
        secret_keys=_secret_keys(env, path.resolve().parent),
        api_token=env.get(API_TOKEN_ENV, ""),
    )
    _validate(settings)
    return settings


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


def _validate(s: Settings) -> None:
    if not s.list.base_url.startswith(("http://", "https://")):
        raise ConfigError("list.base_url", "must start with http:// or https://")
    if not _ADDRESS.match(s.list.from_address):
        raise ConfigError("list.from_address", f"not an email address: {s.list.from_address!r}")
    for key in ("return_path", "reply_to"):
        value = getattr(s.list, key)
        if value and not _ADDRESS.match(value):
            raise ConfigError(f"list.{key}", f"not an email address: {value!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", s.list.id):
        raise ConfigError("list.id", "must be a dotted name such as news.example.org (RFC 2919)")
    for key in ("name", "subject"):
        if re.search(r"[\r\n\x00]", getattr(s.list, key)):
            raise ConfigError(f"list.{key}", "must not contain line breaks")
    if not 1 <= s.smtp.port <= 65535:
        raise ConfigError("smtp.port", "must be between 1 and 65535")
    if s.smtp.connections < 1:
        raise ConfigError("smtp.connections", "must be at least 1")
    if s.smtp.user and not s.smtp.password:
        raise MissingSecret("smtp.password", SMTP_PASSWORD_ENV, f"smtp.user is {s.smtp.user!r}")
    for i, relay in enumerate(s.smtp.fallback):
        if relay.user and not relay.password:
            raise MissingSecret(
                f"smtp.fallback[{i}].password",
                f"{SMTP_PASSWORD_ENV}_{i + 1}",
                f"the relay's user is {relay.user!r}",
            )
    if s.smtp.rate_per_second < 0 or s.smtp.rate_per_hour < 0:
        raise ConfigError("smtp.rate_per_second", "rates must not be negative (0 means unlimited)")
    d = s.delivery
    if d.in_flight < 1 or d.commit_every < 1:
        raise ConfigError("delivery.in_flight", "in_flight and commit_every must be at least 1")
    if d.bounce_threshold < 1:
        raise ConfigError("delivery.bounce_threshold", "must be at least 1")
    if s.dkim is not None and s.dkim.processes < 0:
        raise ConfigError("dkim.processes", "must be 0 (one per core) or more")
    if s.dkim is not None and not s.path(s.dkim.key_file).is_file():
        raise ConfigError("dkim.key_file", f"no such file: {s.path(s.dkim.key_file)}")
    if s.issue.max_items < 1:
        raise ConfigError("issue.max_items", "must be at least 1")
    if s.survey is not None:
        if not s.survey.options or len(s.survey.options) > 20:
            raise ConfigError("survey.options", "needs between 1 and 20 options")
        if len(set(s.survey.options)) != len(s.survey.options):
            raise ConfigError("survey.options", "options must be distinct")
    if s.api_token and len(s.api_token) < 24:
        raise ConfigError("api_token", f"{API_TOKEN_ENV} must be at least 24 characters long")
    for i, editor in enumerate(s.editor):
        if not editor.password_hash.startswith("scrypt$"):
            raise ConfigError(
                f"editor[{i}].password_hash", "make one with `newsletter editor hash-password`"
            )
    for name, sched in s.schedule.items():
        if len(sched.cron.split()) not in (5, 6):
            raise ConfigError(
                f"schedule.{name}.cron",
                "needs 5 fields (min hour day month weekday) or 6 (with seconds first)",
            )
        if sched.min_items < 0:
            raise ConfigError(f"schedule.{name}.min_items", "must not be negative")
    if not 0 < s.scheduler.check_seconds <= 3600:
        raise ConfigError("scheduler.check_seconds", "must be more than 0 and at most 3600")


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
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(args[0], value, where)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                where, f"must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(where, f"expected a list, got {value!r}")
        return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(where, "expected a table")
        return {k: _coerce(val_tp, v, _join(where, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(cast(type[Any], tp), value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in _TYPE_WORDS:
        if type(value) is not tp:
            raise ConfigError(where, f"expected {_TYPE_WORDS[tp]}, got {value!r}")
        return value
    raise ConfigError(where, f"unsupported type {tp!r}")  # pragma: no cover - a bug in this module


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
