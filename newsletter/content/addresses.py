"""Email addresses and display names: the canonical form of an address, a name fit for a header."""

from __future__ import annotations

import re

import idna

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAME_MAX = 200
# Longer than any address can be even before IDNA encoding; refused before any work on it.
LONGEST_INPUT = 1000


def normalize_address(raw: str) -> str:
    """Return the canonical form of an address, or raise ValueError saying what is wrong.

    The domain is mapped and encoded by IDNA 2008 with UTS 46 (as browsers and registries
    do), so an internationalised domain is stored in its ASCII form. The stdlib's "idna"
    codec is IDNA 2003, which maps faß.de to fass.de: another domain, someone else's mail.
    A non-ASCII local part would need SMTPUTF8 end to end (RFC 6531); it is refused here,
    clearly, rather than failing later at some relay.
    """
    addr = _bare(raw)
    local, domain = addr.split("@")
    _check_local(addr, local)
    full = f"{local.lower()}@{_ascii_domain(addr, domain)}"
    if len(full) > 254:
        raise ValueError(f"{addr!r} is longer than 254 characters")
    return full


def _bare(raw: str) -> str:
    """The address without surrounding spaces or <>, if it is one word with exactly one @."""
    addr = raw.strip()
    if len(addr) > LONGEST_INPUT:
        raise ValueError(f"the email address is longer than {LONGEST_INPUT} characters")
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if not addr:
        raise ValueError("the email address is empty")
    if CONTROL.search(addr) or " " in addr:
        raise ValueError(f"the email address {addr!r} contains spaces or control characters")
    if addr.count("@") != 1:
        raise ValueError(f"{addr!r} is not an email address (it needs exactly one @)")
    return addr


def _check_local(addr: str, local: str) -> None:
    if not local.isascii():
        raise ValueError(
            f"{addr!r} has a non-ASCII local part; internationalised mailboxes need SMTPUTF8 "
            "on every relay and are not accepted"
        )
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise ValueError(f"{addr!r} has an invalid local part")
    if len(local) > 64:
        raise ValueError(f"{addr!r} has a local part longer than 64 characters")


def _ascii_domain(addr: str, domain: str) -> str:
    """The domain by IDNA 2008 with UTS 46 mapping, in lower case, checked label by label."""
    try:
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValueError(f"{addr!r} has an invalid domain: {exc}") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{addr!r} has an invalid domain")
    return ascii_domain


def clean_name(raw: str) -> str:
    """A display name fit for a header: trimmed, no line breaks or control characters."""
    if "\r" in raw or "\n" in raw:
        raise ValueError("the name contains a line break")
    if CONTROL.search(raw):
        raise ValueError("the name contains a control character")
    name = " ".join(raw.split())
    if len(name) > NAME_MAX:
        raise ValueError(f"the name is longer than {NAME_MAX} characters")
    return name
