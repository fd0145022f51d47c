"""DKIM signing (RFC 6376): dkimpy's canonicalisation and header building, OpenSSL's RSA."""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Sequence
from typing import Any

import dkim  # type: ignore[import-untyped]
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from newsletter.errors import ConfigError

# RFC 8058 §4 requires List-Unsubscribe and List-Unsubscribe-Post under the signature.
DEFAULT_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
)

# Headers relaxed (relays refold and re-space headers); body simple: our bodies are already
# CRLF-normalised 8bit text, so simple is one strip of trailing blank lines and a hash,
# where relaxed would run two more regex passes over every byte of the ~25 KB body.
_CANONICALIZE = (b"relaxed", b"simple")
_CRLF = b"\r\n"
_DNS_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def _openssl_rsassa_sign(hasher: Any, private_key: rsa.RSAPrivateKey) -> bytes:
    """Stands in for dkim.crypto.RSASSA_PKCS1_v1_5_sign(hash, key): OpenSSL's RSA, same output."""
    if hasher.name != "sha256":
        raise ValueError(f"only rsa-sha256 is signed here, not {hasher.name}")
    return private_key.sign(hasher.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def _rebound(method: Callable[..., Any], **names: object) -> Callable[..., Any]:
    """dkimpy's own `method` (the same code object) with the global `names` resolved to ours.

    dkimpy has no signer hook: DomainSigner.gen_header calls the module-level
    RSASSA_PKCS1_v1_5_sign, and DKIM.sign the module-level parse_pem_private_key. Rather than
    assign to those module globals (process-wide, racy, and it would change every other dkim
    user), the copy gets a private globals dict: a snapshot of dkim's with just these names
    replaced. Nothing shared is mutated, so it is thread-safe, and only our subclass sees it.
    """
    code = method.__code__
    if missing := sorted(set(names) - set(code.co_names)):
        raise ImportError(f"dkimpy's {method.__qualname__} no longer calls {missing}")
    namespace = {**method.__globals__, **names}
    clone = types.FunctionType(code, namespace, None, method.__defaults__, method.__closure__)
    clone.__kwdefaults__ = method.__kwdefaults__
    return clone


class _OpenSSLDKIM(dkim.DKIM):  # type: ignore[misc]
    # sign() receives the already loaded cryptography key and passes it through as is.
    sign = _rebound(dkim.DKIM.sign, parse_pem_private_key=lambda key: key)
    gen_header = _rebound(dkim.DomainSigner.gen_header, RSASSA_PKCS1_v1_5_sign=_openssl_rsassa_sign)

    def set_message(self, message: bytes | None) -> None:
        # dkimpy's parser splits the whole message into lines and joins the body back with
        # CRLF: half the non-RSA time on a 25 KB digest. With no bare LF anywhere that join is
        # the identity, so only the header block goes through it and the body is sliced off.
        if (
            message
            and not message.startswith(_CRLF)
            and message.count(b"\n") == message.count(_CRLF)
        ):
            head, blank, body = message.partition(_CRLF + _CRLF)
            if blank:
                super().set_message(head + blank)
                self.body = body
                return
        super().set_message(message)


class DkimSigner:
    """Signs messages as `domain` with `selector`; safe to share between threads and tasks."""

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key_pem: bytes,
        headers: Sequence[bytes] = DEFAULT_HEADERS,
    ) -> None:
        for setting, value in (("dkim.domain", domain), ("dkim.selector", selector)):
            if not _DNS_NAME.fullmatch(value):
                raise ConfigError(setting, f"{value!r} is not an ASCII DNS name")
        try:
            key = serialization.load_pem_private_key(private_key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise ConfigError("dkim.key_file", f"not an unencrypted PEM private key ({e})") from e
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError("dkim.key_file", f"the key must be RSA, not {type(key).__name__}")
        if key.key_size < 1024:
            raise ConfigError(
                "dkim.key_file", f"a {key.key_size}-bit RSA key is refused by verifiers; use 2048"
            )
        self._key = key
        self._domain = domain.encode("ascii")
        self._selector = selector.encode("ascii")
        self._headers = tuple(h.lower() for h in headers)

    def signature_header(self, message: bytes) -> bytes:
        r"""The 'DKIM-Signature: ...\r\n' header (folded with CRLF) to put in front of `message`."""
        d = _OpenSSLDKIM(message)  # one per call: a DKIM object holds per-message state
        present = {name.lower() for name, _ in d.headers}
        include = [h for h in self._headers if h in present]  # dkimpy requires From
        header: bytes = d.sign(
            self._selector,
            self._domain,
            self._key,
            canonicalize=_CANONICALIZE,
            include_headers=include,
        )
        return header

    def sign(self, message: bytes) -> bytes:
        """signature_header(message) + message"""
        return self.signature_header(message) + message
