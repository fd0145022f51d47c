"""What config.toml must get right for mailbox providers: https links, aligned domains, DKIM keys."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from newsletter import config
from newsletter.content.compiler import Compiled
from newsletter.content.personalize import Personalizer
from newsletter.errors import ConfigError
from newsletter.storage.ledger import Recipient
from newsletter.storage.models import utcnow

SITE = """
[list]
name = "Test"
id = "test.example.org"
from_address = "news@example.org"
base_url = "{base_url}"
"""

LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
# Host names that are not loopback: dotted names, and public IPv4 addresses.
REMOTE_HOST = st.lists(LABEL, min_size=2, max_size=4).map(".".join).filter(
    lambda h: not h.endswith("localhost")
) | st.ip_addresses(v=4).filter(lambda a: not a.is_loopback).map(str)
LOOPBACK_HOST = st.sampled_from(
    ["localhost", "127.0.0.1", "[::1]", "app.localhost"]
) | st.ip_addresses(network=ipaddress.ip_network("127.0.0.0/8")).map(str)
PORT = st.none() | st.integers(1, 65535)
PATH = st.sampled_from(["", "/", "/news", "/a/b/"])


def load(tmp_path: Path, base_url: str, extra: str = "") -> config.Settings:
    path = tmp_path / "config.toml"
    path.write_text(SITE.format(base_url=base_url) + extra, encoding="utf-8")
    return config.load(path, env={})


def url(scheme: str, host: str, port: int | None, path: str) -> str:
    return f"{scheme}://{host}{f':{port}' if port else ''}{path}"


@given(host=REMOTE_HOST, port=PORT, path=PATH)
def test_http_on_a_host_that_is_not_loopback_is_refused(
    tmp_path_factory: pytest.TempPathFactory, host: str, port: int | None, path: str
) -> None:
    tmp_path = tmp_path_factory.mktemp("http")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, url("http", host, port, path))
    assert info.value.key == "list.base_url"
    assert "https://" in str(info.value)
    # The same site over https loads.
    assert load(tmp_path, url("https", host, port, path)).list.base_url.startswith("https://")


@given(host=LOOPBACK_HOST, port=PORT, path=PATH)
def test_http_on_loopback_is_allowed(
    tmp_path_factory: pytest.TempPathFactory, host: str, port: int | None, path: str
) -> None:
    settings = load(tmp_path_factory.mktemp("loop"), url("http", host, port, path))
    assert config.is_https_or_loopback(settings.list.base_url)


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1.example.org", "http://localhost.example.org", "http://[::2]", "https://"],
)
def test_names_that_only_look_like_loopback_are_refused(tmp_path: Path, base_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, base_url)
    assert info.value.key == "list.base_url"


def one_click_headers(settings: config.Settings) -> list[str]:
    compiled = Compiled("s", "<p>x</p>", "x\n", "abcdef012345", (), None, (), utcnow())
    _, data = Personalizer(compiled, settings, None, 1).message(Recipient(1, "a@example.org", ""))
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return [line for line in head.split("\r\n") if line.startswith("List-Unsubscribe")]


def test_one_click_unsubscribe_only_with_https_or_loopback(tmp_path: Path) -> None:
    https = load(tmp_path, "https://news.example.org")
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in one_click_headers(https)
    loopback = load(tmp_path, "http://127.0.0.1:8000")
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in one_click_headers(loopback)
    # Settings made without config.load (as a test or a script may) still never pair an
    # http link with the one-click header.
    plain = dataclasses.replace(
        https, list=dataclasses.replace(https.list, base_url="http://news.example.org")
    )
    (only,) = one_click_headers(plain)
    assert only.startswith("List-Unsubscribe: <http://news.example.org/")
