from __future__ import annotations

from pathlib import Path

import pytest

from newsletter import config
from newsletter.errors import ConfigError, MissingSecret

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
    assert s.survey is not None and len(s.survey.options) == 3
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
    assert key in str(info.value) and "\n" not in str(info.value)


def test_missing_smtp_password_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[smtp]\nuser = 'relay-user'\n")
    with pytest.raises(MissingSecret, match="NEWSLETTER_SMTP_PASSWORD"):
        config.load(path, env={})
    s = config.load(path, env={"NEWSLETTER_SMTP_PASSWORD": "pw"})
    assert s.smtp.password == "pw" and "pw" not in repr(s)


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
