"""What mailbox providers check of a site before they trust its mail: https links, domains
aligned with From (DMARC), and a DKIM key they accept. config.load refuses a site that fails
(naming the key); `newsletter doctor` lists every such problem at once."""

from __future__ import annotations

import ipaddress
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.errors import ConfigError

if TYPE_CHECKING:  # config imports this module; the settings are only read here
    from newsletter.config import Settings


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1, localhost (and names under .localhost, RFC 6761)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_https_or_loopback(url: str) -> bool:
    """Whether links under `url` may go in mail: https anywhere, http only on loopback."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(host)
    return parts.scheme == "http" and is_loopback_host(host)


# --- what mailbox providers check: aligned domains and a DKIM key they accept -------------------

MIN_KEY_BITS = 1024  # RFC 8301: verifiers treat shorter RSA keys as no signature at all
GOOD_KEY_BITS = 2048


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower().rstrip(".")


def organizational_domain(domain: str) -> str:
    """The last two labels of a domain name: the rule alignment is checked by here.

    DMARC's relaxed alignment (RFC 7489 §3.1) compares organizational domains, found with the
    Public Suffix List. Without that list, the last two labels are compared: two domains
    under one registrable domain always share them (news.example.org and example.org), so
    a site that aligns is never refused. Under a two-label public suffix (example.com.cn,
    example.co.uk) the rule is lenient: a.com.cn and b.com.cn pass here and fail DMARC.
    """
    labels = domain.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


def aligned(one: str, other: str) -> bool:
    return organizational_domain(one) == organizational_domain(other)


def mail_problems(s: Settings) -> list[ConfigError]:
    """Every way the site's mail would fail a mailbox provider's checks (https links, DMARC
    alignment, the DKIM key), each naming its key; config.load raises the first."""
    problems: list[ConfigError] = []
    lst = s.list
    if not is_https_or_loopback(lst.base_url):
        # RFC 8058: one-click unsubscribe needs an https URI, and every link in a message
        # starts with base_url. Plain http stays for a server on this machine only (the demo,
        # tests), which no mailbox provider ever fetches.
        problems.append(
            ConfigError(
                "list.base_url",
                f"must start with https:// ({lst.base_url!r} is http on a host that is not "
                "loopback; http is allowed only for 127.0.0.1, ::1 or localhost)",
            )
        )
    from_domain = domain_of(lst.from_address)
    org = organizational_domain(from_domain)
    if lst.return_path and not aligned(domain_of(lst.return_path), from_domain):
        problems.append(
            ConfigError(
                "list.return_path",
                f"its domain {domain_of(lst.return_path)!r} does not align with the From domain "
                f"{from_domain!r} (list.from_address): SPF then cannot pass DMARC; use an "
                f"address under {org}",
            )
        )
    if s.dkim is not None:
        if not aligned(s.dkim.domain, from_domain):
            problems.append(
                ConfigError(
                    "dkim.domain",
                    f"{s.dkim.domain!r} does not align with the From domain {from_domain!r} "
                    f"(list.from_address): the signature then cannot pass DMARC; sign as "
                    f"{org} or a name under it",
                )
            )
        problem = key_problem(s.path(s.dkim.key_file))
        if problem:
            problems.append(ConfigError("dkim.key_file", problem))
    return problems


def key_problem(path: Path) -> str | None:
    """What is wrong with a DKIM private key file; None if a verifier would accept it."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    bits = rsa_key_bits(pem)
    if isinstance(bits, str):
        return f"{path}: {bits}"
    if bits < MIN_KEY_BITS:
        return (
            f"{path} holds a {bits}-bit RSA key; verifiers ignore signatures by keys under "
            f"{MIN_KEY_BITS} bits (RFC 8301): make a {GOOD_KEY_BITS}-bit one"
        )
    return None


def rsa_key_bits(pem: bytes) -> int | str:
    """The size of the RSA private key in `pem`, or why it is not one we can sign with."""
    # Only a site with [dkim] pays for importing cryptography here.
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        # Only its size is read here; skipping the key's consistency check saves ~30 ms.
        key = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"not an unencrypted PEM private key ({exc})"
    if not isinstance(key, rsa.RSAPrivateKey):
        return f"the key must be RSA, not {type(key).__name__}"
    return key.key_size
