"""A site is a folder (config.toml, templates/, subscribers/): its Jinja2 environment and defaults."""

from __future__ import annotations

import datetime as dt
import functools
import shutil
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from newsletter import i18n
from newsletter.errors import NewsletterError

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


def environment(site_dir: Path, language: str = i18n.SOURCE) -> Environment:
    """Templates from the site's templates/ first, then the shipped defaults; autoescape on;
    messages in `language` (Jinja2's i18n extension over its catalog) and its dates."""
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
    return env


def _format_date(value: dt.date | dt.datetime, form: str = "long", *, code: str) -> str:
    return i18n.format_date(value, code, form)


def scaffold(target: Path) -> list[Path]:
    """Create a new site folder from the shipped sample; never overwrites an existing file."""
    source = defaults_dir()
    created: list[Path] = []
    for name in ("config.toml", "templates", "subscribers/example.csv", "examples"):
        src, dst = source / name, target / name
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
        created.append(dst)
    return created
