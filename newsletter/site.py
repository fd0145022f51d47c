"""A site is a folder (config.toml, templates/, subscribers/): its Jinja2 environment and defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

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


def environment(site_dir: Path) -> Environment:
    """Templates from the site's templates/ first, then the shipped defaults; autoescape on."""
    loaders = [FileSystemLoader(str(site_dir / "templates"))]
    default_templates = defaults_dir() / "templates"
    if default_templates.resolve() != (site_dir / "templates").resolve():
        loaders.append(FileSystemLoader(str(default_templates)))
    return Environment(
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
