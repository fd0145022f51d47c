"""DKIM signing (RFC 6376): dkimpy's canonicalisation and header building, OpenSSL's RSA."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import os
import pickle
import re
import signal
import struct
import sys
import time
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dkim  # type: ignore[import-untyped]
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from newsletter.content.layout import assemble
from newsletter.errors import ConfigError, NewsletterError

if TYPE_CHECKING:  # not imported at run time: a signing process starts faster without it
    from newsletter.config import Settings

# Signed: the fields a mailbox provider or a mail client reads. RFC 8058 §4 requires
# List-Unsubscribe and List-Unsubscribe-Post under the signature; Content-Type and
# MIME-Version decide how the body is read.
DEFAULT_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"list-archive",
    b"feedback-id",
    b"auto-submitted",
    b"mime-version",
    b"content-type",
)
# Over-signed (RFC 6376 §8.15): listed in h= once more than the message has them (an absent
# one once), so a copy with one more of them fails. A client shows the topmost From or
# Subject; without this, one added above the signed one would leave the signature valid.
OVERSIGNED: frozenset[bytes] = frozenset(
    (
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"list-id",
        b"list-unsubscribe",
        b"list-unsubscribe-post",
        b"reply-to",
        b"content-type",
    )
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


def _select_headers(headers: list[Any], include_headers: Sequence[bytes]) -> list[Any]:
    """dkimpy's select_headers, the same choice in one pass: for each name in h=, the
    bottom-most field of that name not chosen yet (none once they are used up, which is what
    over-signing relies on). dkimpy's scans every field for every name in h=, lowercasing each."""
    left: dict[bytes, list[int]] = {}
    for i, field in enumerate(headers):
        left.setdefault(field[0].lower(), []).append(i)
    chosen = []
    for name in include_headers:
        if positions := left.get(name):
            chosen.append(headers[positions.pop()])
    return chosen


_MEMO: dict[tuple[object, bytes, bytes], tuple[bytes, bytes]] = {}
_MEMO_SIZE = 1024


class _MemoPolicy(dkim.canonicalization.CanonicalizationPolicy):  # type: ignore[misc]
    """dkimpy's canonicalisation of header fields, each field's result remembered: most of a
    digest's signed fields (From, Subject, List-Id, Content-Type, ...) are the same in every
    message of an issue, and relaxed canonicalisation is two regex passes per field."""

    def canonicalize_headers(self, headers: list[Any]) -> list[tuple[bytes, bytes]]:
        algorithm, memo = self.header_algorithm, _MEMO
        out = []
        for field in headers:
            key = (algorithm, field[0], field[1])
            done = memo.get(key)
            if done is None:
                (done,) = algorithm.canonicalize_headers([field])
                if len(memo) >= _MEMO_SIZE:  # the fields that vary per message fill it
                    memo.clear()
                memo[key] = done
            out.append(done)
        return out


class _BTag:
    """dkimpy's RE_BTAG.sub(rb"\\1", value) (the b= tag's value blanked out), in two steps:
    a search for the tag and a match of its value from there. One regex over the whole
    header, as dkimpy has it, retries the value's pattern at every position: a third slower,
    twice a signature."""

    start = re.compile(rb"[;\s]b" + dkim.FWS + rb"=")
    value = re.compile(rb"(?:" + dkim.FWS + rb"[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")

    def sub(self, repl: bytes, string: bytes) -> bytes:
        if repl != rb"\1":
            return bytes(dkim.RE_BTAG.sub(repl, string))
        out, pos = [], 0
        while (m := self.start.search(string, pos)) is not None:
            out.append(string[pos : m.end()])
            found = self.value.match(string, m.end())
            pos = found.end() if found else m.end()
        out.append(string[pos:])
        return b"".join(out)


_BTAG = _BTag()


def _hash_through(hasher: Any, debug: bool = False) -> Any:
    """dkimpy wraps the header hash to keep a copy of what it hashed for its debug log; with
    the log off the wrapper only adds a Python call to each of the ~40 updates per signature."""
    return dkim.HashThrough(hasher, debug) if debug else hasher


class _OpenSSLDKIM(dkim.DKIM):  # type: ignore[misc]
    # sign() receives the already loaded cryptography key and passes it through as is.
    sign = _rebound(
        dkim.DKIM.sign, parse_pem_private_key=lambda key: key, CanonicalizationPolicy=_MemoPolicy
    )
    gen_header = _rebound(
        dkim.DomainSigner.gen_header,
        RSASSA_PKCS1_v1_5_sign=_openssl_rsassa_sign,
        hash_headers=_rebound(dkim.hash_headers, select_headers=_select_headers, RE_BTAG=_BTAG),
        HashThrough=_hash_through,
        RE_BTAG=_BTAG,
    )

    crlf_only = False  # set on the subclass for messages known to have no bare LF
    headers: list[list[bytes]]  # dkimpy's parse: [name, value] pairs

    def __init__(self, message: bytes | None, wanted: frozenset[bytes] | None = None) -> None:
        self.wanted = wanted  # header names to keep (lowercase); None keeps every field
        super().__init__(message)

    _blank: dict[str, Any] | None = None

    @classmethod
    def fresh(cls, message: bytes, wanted: frozenset[bytes] | None) -> _OpenSSLDKIM:
        """cls(message, wanted) without running dkimpy's constructor each time: its settings
        (a logger, three sets of header names, limits) are copied from one made once."""
        blank = cls._blank
        if blank is None:
            blank = cls._blank = dict(cls(None).__dict__)
        d: _OpenSSLDKIM = cls.__new__(cls)
        d.__dict__.update(blank)
        d.wanted = wanted
        d.set_message(message)
        return d

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
                fields = None if self.wanted is None else _parse_fields(head, self.wanted)
                if fields is not None:  # what rfc822_parse gives, without its line splitting
                    super().set_message(None)
                    self.headers = fields
                else:
                    if self.wanted is not None:
                        head = _keep_fields(head, self.wanted)
                    super().set_message(head + blank)
                self.body = body
                return
        super().set_message(message)
        if self.wanted is not None:
            self.headers = [f for f in self.headers if f[0].lower() in self.wanted]


_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")


def _keep_fields(head: bytes, wanted: frozenset[bytes]) -> bytes:
    """The CRLF header block with only the fields named in `wanted` (each with its folded
    lines), in their order. Unsigned fields never enter a DKIM hash, and dkimpy parses and
    canonicalises every field it is given: a digest carries about as many unsigned fields
    as signed ones. A line that is not a plain "name:" start is kept, for dkimpy to judge."""
    lines = head.split(_CRLF)
    kept: list[bytes] = []
    keep = True
    for line in lines:
        if line[:1] not in (b" ", b"\t"):  # a field starts here; else it folds the last one
            m = _FIELD_NAME.match(line)
            keep = m is None or m.group(1).lower() in wanted
        if keep:
            kept.append(line)
    return _CRLF.join(kept)


def _parse_fields(head: bytes, wanted: frozenset[bytes]) -> list[list[bytes]] | None:
    """dkimpy's rfc822_parse of a CRLF header block, reduced to the fields named in `wanted`:
    [name, value + CRLF] with folded lines appended. None when a line is neither a field's
    start nor a folded line (an mbox "From " line, junk): dkimpy's own parse judges those."""
    fields: list[list[bytes]] = []
    keep = started = False
    for line in head.split(_CRLF):
        if line[:1] in (b" ", b"\t"):
            if not started:  # folds nothing: dkimpy fails on it, and so should this
                return None
            if keep:
                fields[-1][1] += line + _CRLF
            continue
        started = True
        m = _FIELD_NAME.match(line)
        if m is None:
            return None
        name = m.group(1)
        keep = name.lower() in wanted
        if keep:
            fields.append([name, line[m.end() :] + _CRLF])
    return fields


class _CrlfDKIM(_OpenSSLDKIM):
    # For messages rebuilt from our own DATA form: every line already ends in CRLF, so the
    # two counting passes over the whole message (a quarter of the non-RSA time) are skipped.
    crlf_only = True


_RELAXED = _MemoPolicy(dkim.canonicalization.Relaxed, dkim.canonicalization.Simple)
_SIG_NAME = b"DKIM-Signature"
_STAMP_DIGITS = 10  # t= until the year 2286
_T_MARK = b"\x00" * _STAMP_DIGITS
_BH_MARK = b"\x01" * 44  # base64 of a SHA-256 digest


@dataclass(frozen=True, slots=True)
class _Shape:
    """The DKIM-Signature field for one h= list, as dkimpy builds it, with t= and bh= left as
    marks of their exact length: `signed` is the value up to "b=" (folded as dkimpy folds
    it, the b= placeholder it folds with already blanked), `canonical` the relaxed form of
    the whole field that goes into the header hash. The marks contain no white space, so
    folding and canonicalisation leave them whole, and filling them in gives what dkimpy
    would have made of that message."""

    signed: bytes
    canonical: bytes

    @classmethod
    def of(cls, domain: bytes, selector: bytes, include: tuple[bytes, ...]) -> _Shape | None:
        tags = [
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", b"/".join(_CANONICALIZE)),
            (b"d", domain),
            (b"i", b"@" + domain),
            (b"q", b"dns/txt"),
            (b"s", selector),
            (b"t", _T_MARK),
            (b"h", b" : ".join(include)),
            (b"bh", _BH_MARK),
            # dkimpy signs with a placeholder that forces b= onto a line of its own.
            (b"b", b"0" * 60),
        ]
        value = b"; ".join(b"=".join(tag) for tag in tags)
        blank = _BTAG.sub(rb"\1", dkim.fold(value, namelen=len(_SIG_NAME), linesep=_CRLF))
        signed = b"; ".join(b"=".join(tag) for tag in tags[:-1]) + b"; b="
        ((name, canonical),) = dkim.canonicalization.Relaxed.canonicalize_headers(
            [(_SIG_NAME, b" " + blank)]
        )
        for mark in (_T_MARK, _BH_MARK):
            if blank.count(mark) != 1 or canonical.count(mark) != 1:
                return None  # a fold cut through a mark: sign through dkimpy instead
        return cls(signed, name + b":" + canonical.rstrip())


class DkimSigner:
    """Signs messages as `domain` with `selector`; safe to share between threads and tasks."""

    def __init__(
        self,
        domain: str,
        selector: str,
        private_key_pem: bytes,
        headers: Sequence[bytes] = DEFAULT_HEADERS,
        oversigned: Iterable[bytes] = OVERSIGNED,
        *,
        check_key: bool = True,
    ) -> None:
        for setting, value in (("dkim.domain", domain), ("dkim.selector", selector)):
            if not _DNS_NAME.fullmatch(value):
                raise ConfigError(setting, f"{value!r} is not an ASCII DNS name")
        try:
            # OpenSSL's consistency check of an RSA key takes ~35 ms; a signing process is
            # given a key its parent has already loaded and checked, and skips it.
            key = serialization.load_pem_private_key(
                private_key_pem, password=None, unsafe_skip_rsa_key_validation=not check_key
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise ConfigError("dkim.key_file", f"not an unencrypted PEM private key ({e})") from e
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError("dkim.key_file", f"the key must be RSA, not {type(key).__name__}")
        if key.key_size < 1024:
            raise ConfigError(
                "dkim.key_file", f"a {key.key_size}-bit RSA key is refused by verifiers; use 2048"
            )
        self._oversigned = frozenset(h.lower() for h in oversigned)
        self._include: dict[tuple[bytes, ...], list[bytes]] = {}
        self._plans: dict[tuple[bytes, ...], tuple[list[int], _Shape] | None] = {}
        self.args = (domain, selector, private_key_pem, tuple(headers), self._oversigned)
        self._key = key
        self._domain = domain.encode("ascii")
        self._selector = selector.encode("ascii")
        self._headers = tuple(h.lower() for h in headers)
        self._wanted = frozenset(self._headers)

    def signature_header(self, message: bytes, *, crlf_only: bool = False) -> bytes:
        r"""The 'DKIM-Signature: ...\r\n' header (folded with CRLF) to put in front of `message`.

        `crlf_only` says every line of `message` ends in CRLF (no bare LF), as in the
        messages personalize.py lays out; it saves a check, and a wrong promise breaks the
        signature, not the message.
        """
        if crlf_only and (laid_out := self._laid_out(message)) is not None:
            return laid_out
        # One DKIM object per call: it holds per-message state.
        d = (_CrlfDKIM if crlf_only else _OpenSSLDKIM).fresh(message, self._wanted)
        include = self.include(name for name, _ in d.headers)
        header: bytes = d.sign(
            self._selector,
            self._domain,
            self._key,
            canonicalize=_CANONICALIZE,
            include_headers=include,
        )
        return header

    def _laid_out(self, message: bytes) -> bytes | None:
        """The signature header of a message laid out by personalize.py (CRLF lines, every
        signed field well formed), byte for byte what dkimpy's DKIM.sign makes of it (tests
        compare the two), with its per-call Python left out: the DKIM-Signature field's
        folded, canonical form without t=, bh= and b= is worked out once per h= list (it is
        the same for every message of an issue), and each message only fills those in.
        None when the message is not of that shape: dkimpy then signs it.
        """
        head, blank, body = message.partition(_CRLF + _CRLF)
        fields = _parse_fields(head, self._wanted) if blank and head[:1] != b"\r" else None
        if fields is None:
            return None
        plan = self._plan(tuple([name for name, _ in fields]))
        if plan is None:
            return None
        picks, shape = plan
        canonical = _RELAXED.canonicalize_headers(fields)
        chosen = [canonical[i] for i in picks]
        body_hash = base64.b64encode(
            hashlib.sha256(dkim.canonicalization.Simple.canonicalize_body(body)).digest()
        )
        stamp = str(int(time.time())).encode()
        if len(stamp) != _STAMP_DIGITS:
            return None
        digest = hashlib.sha256()
        for name, value in chosen:
            digest.update(name)
            digest.update(b":")
            digest.update(value)
        digest.update(shape.canonical.replace(_T_MARK, stamp).replace(_BH_MARK, body_hash))
        signature = self._key.sign(digest.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        value = shape.signed.replace(_T_MARK, stamp).replace(_BH_MARK, body_hash)
        value += base64.b64encode(signature) + _CRLF
        folded: bytes = dkim.fold(value, namelen=len(_SIG_NAME), linesep=_CRLF)
        return _SIG_NAME + b": " + folded

    def _plan(self, names: tuple[bytes, ...]) -> tuple[list[int], _Shape] | None:
        """For a message with these signed fields (in order): which of them go into the
        header hash, in h= order (dkimpy's choice, _select_headers), and the signature's
        shape. The same for every message of an issue, so worked out once."""
        if names not in self._plans:
            include = self.include(names)
            positions = [(name, i) for i, name in enumerate(names)]
            picks = [i for _, i in _select_headers(positions, include)]
            shape = _Shape.of(self._domain, self._selector, tuple(include))
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[names] = None if shape is None else (picks, shape)
        return self._plans[names]

    def include(self, present: Iterable[bytes]) -> list[bytes]:
        """The h= list for a message with these header names: each signed field as often as
        the message has it, plus once more if it is over-signed."""
        names = tuple(present)
        include = self._include.get(names)
        if include is None:  # the same for every message laid out from one skeleton
            counts = collections.Counter(name.lower() for name in names)
            include = [h for h in self._headers for _ in range(counts[h] + (h in self._oversigned))]
            if len(self._include) > 64:
                self._include.clear()
            self._include[names] = include
        return include

    def sign(self, message: bytes) -> bytes:
        """signature_header(message) + message"""
        return self.signature_header(message) + message


# --- signing beside the sender ------------------------------------------------------------------
#
# Each signing process is `python -m newsletter.delivery.signing`, talking over its stdin and stdout in
# frames: a 4-byte big-endian length, then a pickle. The first frame carries DkimSigner's
# arguments and the skeleton (personalize.Personalizer.skeleton: the message's fixed
# bytes between its slots); each later one a batch of members' slot values, answered in order
# by a frame with their DKIM-Signature headers. So a message crosses the pipe as its few
# hundred bytes of slot values, not its 25 KB, and the signer lays it out itself, exactly as
# the sender does. The parent reads and writes the pipes from its event loop: no threads in
# the sender (an executor's feeder and result threads would contend for the GIL with the
# sending loop).

_LENGTH = struct.Struct(">I")


def signer_for(settings: Settings) -> DkimSigner | None:
    """The [dkim] table's signer, or None when DKIM is not configured."""
    if settings.dkim is None:
        return None
    key = settings.path(settings.dkim.key_file).read_bytes()
    return DkimSigner(settings.dkim.domain, settings.dkim.selector, key)


class SigningFailed(NewsletterError):
    pass


def _serve() -> None:
    """The signing process's loop: frames in on stdin, headers out on stdout, until EOF."""
    # The parent decides when this process ends (by closing its stdin), so a Ctrl-C or a
    # SIGTERM meant for the sender does not cut off signatures it is still waiting for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer

    def read() -> bytes | None:
        head = inp.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return None
        return inp.read(_LENGTH.unpack(head)[0])

    first = read()
    if first is None:
        return
    args, skeleton = pickle.loads(first)
    signer = DkimSigner(*args, check_key=False)  # checked by the sender that started us
    sign = signer.signature_header
    while (frame := read()) is not None:
        batch: list[list[bytes]] = pickle.loads(frame)
        # Skeletons from personalize.py end every line in CRLF.
        headers = [sign(assemble(skeleton, values), crlf_only=True) for values in batch]
        body = pickle.dumps(headers, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(_LENGTH.pack(len(body)) + body)
        out.flush()


def _frame(value: object) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class _Child:
    """One signing process: batches written in order, answers read back in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        assert proc.stdin is not None
        assert proc.stdout is not None
        self.stdin, self.stdout = proc.stdin, proc.stdout
        self.waiting: collections.deque[list[asyncio.Future[bytes]]] = collections.deque()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        error = "exited"
        try:
            while True:
                head = await self.stdout.readexactly(_LENGTH.size)
                headers: list[bytes] = pickle.loads(
                    await self.stdout.readexactly(_LENGTH.unpack(head)[0])
                )
                for future, header in zip(self.waiting.popleft(), headers, strict=True):
                    if not future.done():
                        future.set_result(header)
        except asyncio.IncompleteReadError:
            pass
        # A garbled answer (unpickling can raise anything): the process is no use any more.
        except Exception as exc:  # noqa: BLE001 - whatever it was, the waiting futures must hear
            error = f"failed: {exc}"
        code = await self.proc.wait()
        failure = SigningFailed(f"a DKIM signing process {error} (exit code {code})")
        while self.waiting:
            for future in self.waiting.popleft():
                if not future.done():
                    future.set_exception(failure)

    def send(self, batch: list[list[bytes]]) -> list[asyncio.Future[bytes]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in batch]
        if self.reader.done():
            for future in futures:
                future.set_exception(SigningFailed("a DKIM signing process has exited"))
            return futures
        self.waiting.append(futures)
        self.stdin.write(_frame(batch))
        return futures


class SigningPool:
    """DKIM-signs one issue's messages in separate processes, in batches, ahead of the sending.

    RSA-2048 costs 0.4-0.8 ms a signature and dkimpy's header work over a hundred
    microseconds of Python; in threads that Python would hold the sending loop's GIL. In
    processes it runs on the other cores, and the sender only moves slot values: a batch goes
    out in one frame, and its headers come back in one.
    """

    def __init__(self, children: list[_Child], batch: int) -> None:
        self.children = children
        self.batch = batch

    @classmethod
    async def start(
        cls,
        signer: DkimSigner,
        skeleton: Sequence[bytes],
        processes: int = 0,
        batch: int = 16,
    ) -> SigningPool:
        """Signers for messages laid out as pool.assemble(skeleton, values)."""
        children = []
        for _ in range(processes or os.cpu_count() or 1):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "newsletter.delivery.signing",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            child = _Child(proc)
            child.stdin.write(_frame((signer.args, tuple(skeleton))))
            children.append(child)
        return cls(children, batch)

    def sign_all(self, slot_values: Sequence[list[bytes]]) -> list[asyncio.Future[bytes]]:
        """One future per message (given by its slot values), resolving to its DKIM-Signature
        header for the plain message assemble(skeleton, values)."""
        futures: list[asyncio.Future[bytes]] = []
        for start in range(0, len(slot_values), self.batch):
            # The child with the fewest batches outstanding takes the next one.
            child = min(self.children, key=lambda c: len(c.waiting))
            futures += child.send(list(slot_values[start : start + self.batch]))
        return futures

    async def close(self) -> None:
        for child in self.children:
            with contextlib.suppress(ConnectionError):
                child.stdin.close()
        for child in self.children:
            try:
                await asyncio.wait_for(child.proc.wait(), timeout=10)
            except TimeoutError:
                child.proc.kill()
                await child.proc.wait()
            await child.reader


if __name__ == "__main__":
    _serve()
