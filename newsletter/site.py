"""A site is a folder (config.toml, templates/, subscribers/): its Jinja2 environment and defaults."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import re
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import idna
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from newsletter import config, i18n
from newsletter.config import WordingSettings
from newsletter.errors import ConfigError, NewsletterError

_PACKAGE = Path(__file__).resolve().parent


def defaults_dir() -> Path:
    """The shipped sample site: inside a built wheel, or the repository's top level in a checkout."""
    bundled = _PACKAGE / "_site"
    if (bundled / "templates").is_dir():
        return bundled
    checkout = _PACKAGE.parent
    if (checkout / "templates").is_dir() and (checkout / "config.toml").is_file():
        return checkout
    raise NewsletterError(
        "the default templates are missing from this installation"
    )  # pragma: no cover


def environment(
    site_dir: Path, language: str = i18n.SOURCE, wording: WordingSettings | None = None
) -> Environment:
    """Templates from the site's templates/ first, then the shipped defaults; autoescape on;
    messages in `language` (Jinja2's i18n extension over its catalog) and its dates.

    Every template sees `words`: the site's [wording] (neutral defaults without one).
    """
    loaders = [FileSystemLoader(str(site_dir / "templates"))]
    default_templates = defaults_dir() / "templates"
    if default_templates.resolve() != (site_dir / "templates").resolve():
        loaders.append(FileSystemLoader(str(default_templates)))
    env = Environment(
        extensions=["jinja2.ext.i18n"],
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(["html", "htm", "xml"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Read once per process: a template edited on disk shows after a restart, and no page
        # view pays for checking the file's timestamp.
        auto_reload=False,
    )
    # New-style gettext: `_("…%(n)s", n=…)` formats and escapes like {% trans %} does.
    env.install_gettext_translations(i18n.translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.filters["format_date"] = functools.partial(_format_date, code=language)
    env.globals["language"] = language
    env.globals["html_lang"] = i18n.html_lang(language)
    env.globals["words"] = wording or WordingSettings()
    return env


def _format_date(value: dt.date | dt.datetime, form: str = "long", *, code: str) -> str:
    return i18n.format_date(value, code, form)


def scaffold(target: Path) -> list[Path]:
    """Create a new site folder from the shipped sample; never overwrites an existing file."""
    source = defaults_dir()
    created: list[Path] = []
    for name in ("config.toml", "templates", "subscribers/example.csv", "examples"):
        created += _copy(source / name, target / name)
    return created


def _copy(src: Path, dst: Path) -> list[Path]:
    if dst.exists():
        return []
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return [dst]


@dataclass(frozen=True, slots=True)
class Answers:
    """What `newsletter init` asks for a neutral site."""

    name: str
    from_address: str
    base_url: str
    relay: str = "127.0.0.1:8025"  # HOST:PORT; the bundled sink by default


# The option each answer comes from, to name it when a config key refuses it.
ANSWER_OPTIONS = {
    "list.name": "--name",
    "list.id": "--name",
    "list.from_address": "--from",
    "list.base_url": "--url",
    "smtp.host": "--relay",
    "smtp.port": "--relay",
    "web.host": "--url",
    "web.port": "--url",
}
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class BadAnswer(NewsletterError, ValueError):
    """An answer to `init` that would make a broken config.toml; names the option."""

    def __init__(self, option: str, problem: str) -> None:
        self.option, self.problem = option, problem
        super().__init__(f"{option}: {problem}")


def neutral_config(answers: Answers) -> str:
    """The text of a neutral site's config.toml: no survey, no schedule, neutral wording.

    The answers are checked the way config.toml is when loaded (a bad one raises BadAnswer
    naming its option), so `init` never writes a file that `newsletter` then refuses.
    """
    name = " ".join(answers.name.split())
    if not name or len(name) > 200 or re.search(r"[\r\n\x00]", answers.name):
        raise BadAnswer(
            "--name",
            f"the list's name must be one line of 1 to 200 characters, got {answers.name!r}",
        )
    url, listen = _public_url(answers.base_url)
    relay_host, relay_port = _relay(answers.relay)
    values: dict[str, str | int] = {
        "__LIST_NAME__": name,
        "__LIST_ID__": _list_id(name, answers.from_address),
        "__FROM_ADDRESS__": answers.from_address.strip(),
        "__BASE_URL__": url,
        "__SMTP_HOST__": relay_host,
        "__SMTP_PORT__": relay_port,
        "__WEB_HOST__": listen[0],
        "__WEB_PORT__": listen[1],
    }
    text = (_PACKAGE / "skeleton" / "config.toml").read_text(encoding="utf-8")
    for marker, value in values.items():
        text = text.replace(marker, _toml(value))
    _check(text)
    return text


def _public_url(raw: str) -> tuple[str, tuple[str, int]]:
    """The base URL, and where `serve` listens: where the URL says when that is this machine
    (serve is the public address itself), else 127.0.0.1:8000 behind the site's proxy."""
    url = raw.strip().rstrip("/")
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad IPv6 literal or port
        host = port = None
    if (
        not url.startswith(("http://", "https://"))
        or not host
        or re.search(r"[\s\x00-\x1f\x7f]", url)
    ):
        raise BadAnswer(
            "--url",
            f"the public address must start with http:// or https:// and name a host, got {raw!r}",
        )
    if host not in _LOOPBACK:
        return url, ("127.0.0.1", 8000)
    return url, (host, port or (443 if url.startswith("https:") else 80))


def _relay(raw: str) -> tuple[str, int]:
    host, sep, port = raw.strip().rpartition(":")
    host = host.strip("[]")
    if (
        not sep
        or not re.fullmatch(r"[A-Za-z0-9.:_-]+", host)
        or not port.isascii()
        or not port.isdigit()
        or not 1 <= int(port) <= 65535
    ):
        raise BadAnswer(
            "--relay",
            f"the SMTP relay must be HOST:PORT (e.g. smtp.example.org:587), got {raw!r}",
        )
    return host, int(port)


def _toml(value: str | int) -> str:
    """A TOML value: a number bare, a string as a basic string. JSON's escapes are TOML's, but
    TOML also forbids a raw DEL (U+007F), which JSON leaves as it is."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _list_id(name: str, from_address: str) -> str:
    """A List-Id (RFC 2919) from the name and the From domain: "Our News" → our-news.example.org."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "news"
    domain = from_address.strip().rpartition("@")[2]
    with contextlib.suppress(idna.IDNAError):  # the From check names a bad address
        domain = idna.encode(domain, uts46=True).decode("ascii")
    return f"{slug}.{domain}" if re.fullmatch(r"[A-Za-z0-9.-]+", domain) else slug


def _check(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text(text, encoding="utf-8")
        try:
            config.load(path, env={})
        except ConfigError as exc:
            option = ANSWER_OPTIONS.get(exc.key)
            if option is None:
                raise  # pragma: no cover - the skeleton itself is broken: a bug, tested
            raise BadAnswer(option, exc.problem) from None


def scaffold_neutral(target: Path, answers: Answers) -> list[Path]:
    """A new site of one's own: config.toml from the answers, the shipped templates, an empty
    member list and no item. Never overwrites an existing file."""
    text = neutral_config(answers)
    created: list[Path] = []
    config_path = target / "config.toml"
    if not config_path.exists():
        target.mkdir(parents=True, exist_ok=True)
        config_path.write_text(text, encoding="utf-8")
        created.append(config_path)
    created += _copy(defaults_dir() / "templates", target / "templates")
    members = target / "subscribers" / "members.csv"
    if not members.exists():
        members.parent.mkdir(parents=True, exist_ok=True)
        members.write_text("email,name\n", encoding="utf-8")
        created.append(members)
    ignore = target / ".gitignore"
    if not ignore.exists():
        # The database, outbox and previews, and real members' addresses, stay out of git.
        ignore.write_text("/var/\n/subscribers/\n", encoding="utf-8")
        created.append(ignore)
    return created
