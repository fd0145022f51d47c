"""What config.toml must get right for mailbox providers: https links, aligned domains, DKIM keys."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from newsletter import config, deliverability
from newsletter.content.compiler import Compiled
from newsletter.content.personalize import Personalizer
from newsletter.errors import ConfigError
from newsletter.storage.ledger import Recipient
from newsletter.storage.models import utcnow
from tests.dkimkeys import WEAK_512, rsa_pem

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
    assert deliverability.is_https_or_loopback(settings.list.base_url)


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


DKIM = """
[dkim]
domain = "{domain}"
selector = "s1"
key_file = "dkim.pem"
"""


def with_domains(
    tmp_path: Path, from_domain: str, dkim_domain: str | None, return_domain: str | None
) -> str:
    text = SITE.format(base_url="https://news.example.org").replace(
        "news@example.org", f"news@{from_domain}"
    )
    if return_domain is not None:
        text = text.replace("[list]\n", f'[list]\nreturn_path = "bounces@{return_domain}"\n')
    if dkim_domain is not None:
        text += DKIM.format(domain=dkim_domain)
        (tmp_path / "dkim.pem").write_bytes(rsa_pem(1024))
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


ORG = st.tuples(LABEL, st.sampled_from(["org", "com", "cn", "net"]))
SUBDOMAIN = st.lists(LABEL, max_size=2)


@st.composite
def domain_under(draw: st.DrawFn, org: tuple[str, str]) -> str:
    name = ".".join([*draw(SUBDOMAIN), *org])
    return draw(st.sampled_from([name, name.upper(), name + "."]))


@given(data=st.data(), org=ORG, other=ORG)
def test_dkim_and_return_path_domains_must_align_with_from(
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
    org: tuple[str, str],
    other: tuple[str, str],
) -> None:
    tmp_path = tmp_path_factory.mktemp("align")
    from_domain = data.draw(domain_under(org)).rstrip(".")
    signer = data.draw(st.sampled_from([org, other]))
    bounces = data.draw(st.sampled_from([org, other]))
    dkim_domain = data.draw(domain_under(signer)).rstrip(".")
    return_domain = data.draw(domain_under(bounces)).rstrip(".")
    path = with_domains(tmp_path, from_domain, dkim_domain, return_domain)
    expected = []
    if bounces != org:
        expected.append("list.return_path")
    if signer != org:
        expected.append("dkim.domain")
    if not expected:
        settings = config.load(path, env={})
        assert settings.dkim is not None
        assert deliverability.mail_problems(settings) == []
        return
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert info.value.key == expected[0]
    assert ".".join(org) in str(info.value)  # says which domain would align
    # Loaded without the checks (as `newsletter doctor` does), every problem is listed.
    settings = config.load(path, env={}, mail_checks=False)
    assert [p.key for p in deliverability.mail_problems(settings)] == expected


def test_the_organizational_domain_is_the_last_two_labels() -> None:
    assert deliverability.organizational_domain("News.Example.ORG.") == "example.org"
    assert deliverability.organizational_domain("example.org") == "example.org"
    assert deliverability.aligned("mail.example.org", "example.org")
    assert not deliverability.aligned("example.net", "example.org")
    # The documented leniency: without the Public Suffix List, two sites under one
    # two-label suffix look aligned.
    assert deliverability.aligned("a.com.cn", "b.com.cn")


@pytest.mark.parametrize(
    ("pem", "words"),
    [
        pytest.param(WEAK_512, "512-bit", id="512-bit"),
        pytest.param(b"not a key", "not an unencrypted PEM private key", id="garbage"),
        pytest.param(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "must be RSA",
            id="ec",
        ),
        pytest.param(None, "no such file", id="missing"),
    ],
)
def test_a_key_verifiers_would_ignore_is_refused(
    tmp_path: Path, pem: bytes | None, words: str
) -> None:
    path = with_domains(tmp_path, "example.org", "example.org", None)
    if pem is None:
        (tmp_path / "dkim.pem").unlink()
    else:
        (tmp_path / "dkim.pem").write_bytes(pem)
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert info.value.key == "dkim.key_file"
    assert words in str(info.value)


def test_keys_of_1024_bits_and_more_load(tmp_path: Path) -> None:
    path = with_domains(tmp_path, "example.org", "news.example.org", "example.org")
    for bits in (1024, 2048):
        (tmp_path / "dkim.pem").write_bytes(rsa_pem(bits))
        assert config.load(path, env={}).dkim is not None


@given(garbage=st.binary(max_size=400))
def test_any_bytes_that_are_not_an_rsa_key_name_the_key_file(
    tmp_path_factory: pytest.TempPathFactory, garbage: bytes
) -> None:
    tmp_path = tmp_path_factory.mktemp("key")
    path = with_domains(tmp_path, "example.org", "example.org", None)
    (tmp_path / "dkim.pem").write_bytes(garbage)
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert info.value.key == "dkim.key_file"
    assert "\n" not in str(info.value)


@given(
    before=st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=20),
    brk=st.sampled_from(["\r", "\n", "\r\n", "\x00"]),
)
def test_a_postal_address_is_one_line(
    tmp_path_factory: pytest.TempPathFactory, before: str, brk: str
) -> None:
    tmp_path = tmp_path_factory.mktemp("postal")
    value = json.dumps(before + brk + "Beijing", ensure_ascii=False)  # TOML reads this
    path = tmp_path / "config.toml"
    path.write_text(
        SITE.format(base_url="https://news.example.org").replace(
            "[list]\n", f"[list]\npostal_address = {value}\n"
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert info.value.key == "list.postal_address"
