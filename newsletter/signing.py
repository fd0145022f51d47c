"""DKIM signing (RFC 6376): dkimpy's canonicalisation and header building, OpenSSL's RSA."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import re
import types
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
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

    crlf_only = False  # set on the subclass for messages known to have no bare LF

    def set_message(self, message: bytes | None) -> None:
        # dkimpy's parser splits the whole message into lines and joins the body back with
        # CRLF: half the non-RSA time on a 25 KB digest. With no bare LF anywhere that join is
        # the identity, so only the header block goes through it and the body is sliced off.
        if (
            message
            and not message.startswith(_CRLF)
            and (self.crlf_only or message.count(b"\n") == message.count(_CRLF))
        ):
            head, blank, body = message.partition(_CRLF + _CRLF)
            if blank:
                super().set_message(head + blank)
                self.body = body
                return
        super().set_message(message)


class _CrlfDKIM(_OpenSSLDKIM):
    # For messages rebuilt from our own DATA form: every line already ends in CRLF, so the
    # two counting passes over the whole message (a quarter of the non-RSA time) are skipped.
    crlf_only = True


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
        self.args = (domain, selector, private_key_pem, tuple(headers))
        self._key = key
        self._domain = domain.encode("ascii")
        self._selector = selector.encode("ascii")
        self._headers = tuple(h.lower() for h in headers)

    def signature_header(self, message: bytes, *, crlf_only: bool = False) -> bytes:
        r"""The 'DKIM-Signature: ...\r\n' header (folded with CRLF) to put in front of `message`.

        `crlf_only` says every line of `message` ends in CRLF (no bare LF), as in the
        messages personalize.py lays out; it saves a check, and a wrong promise breaks the
        signature, not the message.
        """
        # One DKIM object per call: it holds per-message state.
        d = (_CrlfDKIM if crlf_only else _OpenSSLDKIM)(message)
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


# --- signing beside the sender ------------------------------------------------------------------

_SIGNER: DkimSigner | None = None  # one per signing process, made by _start_signer


def _start_signer(domain: str, selector: str, pem: bytes, headers: tuple[bytes, ...]) -> None:
    global _SIGNER
    _SIGNER = DkimSigner(domain, selector, pem, headers)


def _sign_wires(wires: list[bytes]) -> list[bytes]:
    """Runs in a signing process: each DATA-form message with its DKIM-Signature in front."""
    assert _SIGNER is not None, "the pool's initializer makes the signer"
    signed = []
    for wire in wires:
        # The signature covers the plain message: the DATA form without its final "." line
        # and with the dot-stuffing undone. The header never starts with a dot, so it goes
        # in front of the DATA form as it is.
        plain = wire[:-3].replace(b"\r\n..", b"\r\n.")
        signed.append(_SIGNER.signature_header(plain, crlf_only=True) + wire)
    return signed


class SigningPool:
    """DKIM-signs messages in separate processes, in batches, ahead of the sending.

    RSA-2048 costs about 0.8 ms a signature here and dkimpy's header work a few hundred
    microseconds of Python; in threads that Python would hold the sending loop's GIL. In
    processes it runs on the other cores, and the sender only moves bytes: a batch of
    messages goes out in one pickle and comes back with the headers in front.
    """

    def __init__(self, signer: DkimSigner, processes: int = 0, batch: int = 16) -> None:
        self.processes = processes or os.cpu_count() or 1
        self.batch = batch
        # spawn, not fork: the sender has threads (the database's), which fork would copy
        # mid-state; a signing process needs only the key and dkimpy.
        self._executor = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_signer,
            initargs=signer.args,
        )

    def sign_all(self, wires: Sequence[bytes]) -> list[asyncio.Future[bytes]]:
        """One future per message, resolving to the signed DATA form, in batches of `batch`."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bytes]] = []
        for start in range(0, len(wires), self.batch):
            chunk = list(wires[start : start + self.batch])
            waiting = [loop.create_future() for _ in chunk]
            done = self._executor.submit(_sign_wires, chunk)
            done.add_done_callback(functools.partial(_hand_back, loop, waiting))
            futures += waiting
        return futures

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _hand_back(
    loop: asyncio.AbstractEventLoop, waiting: list[asyncio.Future[bytes]], done: Future[list[bytes]]
) -> None:
    """Called in the executor's thread: the results go to the loop's thread."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(_settle, done, waiting)


def _settle(done: Future[list[bytes]], waiting: list[asyncio.Future[bytes]]) -> None:
    if done.cancelled():
        for w in waiting:
            w.cancel()
        return
    exc = done.exception()
    for n, w in enumerate(waiting):
        if w.done():
            continue
        if exc is not None:
            w.set_exception(exc)
        else:
            w.set_result(done.result()[n])
