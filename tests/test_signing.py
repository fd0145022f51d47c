"""DKIM signing: dkimpy verifies what DkimSigner signs, and the signature covers what it must."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.header import Header

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim.util import parse_tag_value  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from newsletter.delivery.signing import DEFAULT_HEADERS, OVERSIGNED, DkimSigner
from newsletter.errors import ConfigError

DOMAIN, SELECTOR = "news.example.org", "nl2025"
CRLF = b"\r\n"
UNSUBSCRIBE = b"https://news.example.org/u/AbCdEf0123456789"


@dataclass(frozen=True)
class Key:
    pem: bytes  # PKCS#1 ("BEGIN RSA PRIVATE KEY"), which dkimpy's own parser reads too
    txt: bytes  # the selector's DNS TXT record

    def dnsfunc(self, expected: bytes) -> Callable[..., bytes]:
        """dkimpy calls dnsfunc(name, timeout=...) with name = b'<s>._domainkey.<d>.'."""

        def lookup(name: bytes, timeout: float = 5) -> bytes:
            assert name == expected
            return self.txt

        return lookup


@pytest.fixture(scope="module")
def key() -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki))


@pytest.fixture(scope="module")
def signer(key: Key) -> DkimSigner:
    return DkimSigner(DOMAIN, SELECTOR, key.pem)


def message(unsubscribe: bytes = UNSUBSCRIBE, filler: int = 40) -> bytes:
    """A digest laid out as newsletter.content.personalize lays it out: CRLF, 8bit, multipart."""
    subject = Header("本周摘要：开源新闻与社区动态", "utf-8", header_name="Subject").encode(
        linesep="\r\n"
    )
    boundary = b"=_nl_0123456789abcdef01234567"
    headers = [
        b"From: Example News <news@news.example.org>",
        b'To: "Ada Lovelace" <ada@example.com>',
        b"Subject: " + subject.encode("ascii"),
        b"Date: Mon, 03 Mar 2025 09:00:00 +0000",
        b"Message-ID: <42.7.deadbeef@news.example.org>",
        b"List-Id: Example News <news.example.org>",
        b"List-Unsubscribe: <" + unsubscribe + b">",
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        b"List-Archive: <https://news.example.org/archive>",
        b"X-Campaign: 42",  # signed by no one: the signer drops it before dkimpy sees it
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/alternative; boundary="' + boundary + b'"',
    ]
    text = "你好 Ada, this week's items:\r\n".encode() + b"* An item  with  spaces \r\n" * filler
    html = b"<p>" + "你好".encode() + b"</p>\r\n" + b"<li>An item</li>\r\n" * filler
    part = b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
    body = b"".join(
        [
            b"This is a multi-part message in MIME format.\r\n",
            b"--" + boundary + CRLF + part % b"plain" + text + CRLF,
            b"--" + boundary + CRLF + part % b"html" + html + CRLF,
            b"--" + boundary + b"--" + CRLF,
        ]
    )
    return CRLF.join(headers) + CRLF + CRLF + body


def verify(signed: bytes, key: Key) -> bool:
    name = f"{SELECTOR}._domainkey.{DOMAIN}.".encode()
    result: bool = dkim.verify(signed, dnsfunc=key.dnsfunc(name))
    return result


def tags(header: bytes) -> dict[bytes, bytes]:
    name, _, value = header.partition(b":")
    assert name == b"DKIM-Signature"
    parsed: dict[bytes, bytes] = parse_tag_value(value.replace(CRLF, b""))
    return parsed


def test_signed_message_verifies(signer: DkimSigner, key: Key) -> None:
    msg = message()
    signed = signer.sign(msg)
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(msg)
    assert verify(signed, key)


def test_signature_tags(signer: DkimSigner) -> None:
    t = tags(signer.signature_header(message()))
    signed = [h.strip() for h in t[b"h"].split(b":")]
    for h in (b"from", b"to", b"subject", b"date", b"message-id", b"list-id", b"list-archive"):
        assert h in signed
    for h in (b"list-unsubscribe", b"list-unsubscribe-post", b"mime-version", b"content-type"):
        assert h in signed
    assert b"feedback-id" not in signed  # not over-signed, and this message has none
    # Each over-signed field once more than the message has it; reply-to, absent, once.
    expected = [
        h
        for h in DEFAULT_HEADERS
        for _ in range((h in message()[:2000].lower()) + (h in OVERSIGNED))
    ]
    assert signed == expected
    assert signed.count(b"from") == 2
    assert signed.count(b"reply-to") == 1
    assert signed.count(b"list-archive") == 1
    assert t[b"c"] == b"relaxed/simple"
    assert t[b"a"] == b"rsa-sha256"
    assert t[b"d"] == DOMAIN.encode()
    assert t[b"s"] == SELECTOR.encode()
    assert len(base64.b64decode(re.sub(rb"\s+", b"", t[b"b"]))) == 256  # RSA-2048


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda m: m.replace(b"An item  with", b"An item  wiTh", 1), id="body-byte"),
        pytest.param(lambda m: m.replace(UNSUBSCRIBE, b"https://evil.example/u/x"), id="unsub"),
        pytest.param(lambda m: m.replace(b"One-Click", b"One-Clack"), id="unsub-post"),
        pytest.param(lambda m: m.replace(b"ada@example.com", b"eve@example.com"), id="to"),
        pytest.param(lambda m: m + b"appended\r\n", id="appended-body"),
    ],
)
def test_tampering_fails(signer: DkimSigner, key: Key, tamper: Callable[[bytes], bytes]) -> None:
    signed = signer.sign(message())
    assert tamper(signed) != signed
    assert not verify(tamper(signed), key)


ADDED = [
    b"From: Mallory <news@news.example.org>",
    b"Subject: Your account is locked",
    b"List-Unsubscribe: <https://evil.example/u/x>",
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    b"To: someone@example.com",
    b"Date: Tue, 04 Mar 2025 09:00:00 +0000",
    b"Message-ID: <other@news.example.org>",
    b"List-Id: Other <other.example.org>",
    b"Reply-To: mallory@evil.example",
    b'Content-Type: text/plain; charset="utf-8"',
]


@pytest.mark.parametrize("field", ADDED, ids=[f.split(b":")[0].decode() for f in ADDED])
@pytest.mark.parametrize("where", ["above", "below", "top"])
def test_a_field_a_client_shows_cannot_be_added(
    signer: DkimSigner, key: Key, field: bytes, where: str
) -> None:
    signed = signer.sign(message())
    name = field.split(b":")[0] + b":"
    if where == "top":  # above the signature itself
        forged = field + CRLF + signed
    else:
        head, _, body = signed.partition(CRLF + CRLF)
        lines = head.split(CRLF)
        at = next((i for i, line in enumerate(lines) if line.startswith(name)), len(lines))
        lines.insert(at if where == "above" else at + 1, field)
        forged = CRLF.join(lines) + CRLF + CRLF + body
    assert verify(signed, key)
    assert not verify(forged, key)


@pytest.mark.parametrize(
    "field",
    [b"Received: from relay.example by mx.example", b"X-Spam-Score: 0.1", b"Feedback-ID: x"],
)
def test_fields_relays_add_leave_the_signature_valid(
    signer: DkimSigner, key: Key, field: bytes
) -> None:
    assert verify(field + CRLF + signer.sign(message()), key)


@given(
    headers=st.lists(st.sampled_from([b"From", b"to", b"TO", b"Subject", b"x"]), max_size=8),
    include=st.lists(st.sampled_from([b"from", b"to", b"subject", b"cc"]), max_size=10),
)
def test_the_field_choice_is_dkimpys(headers: list[bytes], include: list[bytes]) -> None:
    from newsletter.delivery.signing import _select_headers

    fields = [(name, b"value %d" % i) for i, name in enumerate(headers)]
    assert _select_headers(fields, include) == dkim.select_headers(fields, include)


@given(
    st.lists(
        st.sampled_from(
            [b"b", b"=", b";", b" ", b"\t", b"\r\n", b"\n", b"h", b"A", b"0", b"+/", b"x"]
        )
    )
)
def test_the_b_tag_is_blanked_as_dkimpy_blanks_it(pieces: list[bytes]) -> None:
    from newsletter.delivery.signing import _BTAG

    value = b"".join(pieces)
    assert _BTAG.sub(rb"\1", value) == dkim.RE_BTAG.sub(rb"\1", value)


def test_relaxed_headers_survive_refolding(signer: DkimSigner, key: Key) -> None:
    signed = signer.sign(message())
    refolded = signed.replace(b"List-Id: Example News", b"List-Id:   Example\r\n\tNews", 1)
    assert refolded != signed
    assert verify(refolded, key)


def test_header_lines_and_folding(signer: DkimSigner) -> None:
    header = signer.signature_header(message())
    assert header.endswith(CRLF)
    assert not header.endswith(CRLF + CRLF)
    assert b"\n" not in header.replace(CRLF, b"")
    assert b"\r" not in header.replace(CRLF, b"")
    lines = header[:-2].split(CRLF)
    assert len(lines) > 1  # folded
    assert all(len(line) <= 998 for line in lines)
    assert all(line[:1] in (b" ", b"\t") for line in lines[1:])  # continuation lines


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(b"not a key", id="garbage"),
        pytest.param(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"),
        pytest.param(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            id="ec-key",
        ),
    ],
)
def test_bad_key_names_the_setting(pem: bytes) -> None:
    with pytest.raises(ConfigError) as info:
        DkimSigner(DOMAIN, SELECTOR, pem)
    assert info.value.key == "dkim.key_file"
    assert "dkim.key_file" in str(info.value)


def test_encrypted_key_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ConfigError, match=r"dkim\.key_file"):
        DkimSigner(DOMAIN, SELECTOR, pem)


def test_bad_domain_or_selector(key: Key) -> None:
    with pytest.raises(ConfigError, match=r"dkim\.domain"):
        DkimSigner("news.example.org; x=y", SELECTOR, key.pem)
    with pytest.raises(ConfigError, match=r"dkim\.selector"):
        DkimSigner(DOMAIN, "", key.pem)


def test_same_signature_as_dkimpy(
    signer: DkimSigner, key: Key, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RSASSA-PKCS1-v1_5 is deterministic: at one t= both paths give the same bytes."""
    monkeypatch.setattr(time, "time", lambda: 1_740_992_400.0)
    msg = message()
    ours = signer.signature_header(msg)
    include = signer.include(name for name, _ in dkim.rfc822_parse(msg)[0])
    theirs: bytes = dkim.sign(
        msg,
        SELECTOR.encode(),
        DOMAIN.encode(),
        key.pem,
        canonicalize=(b"relaxed", b"simple"),
        include_headers=include,
    )
    assert verify(ours + msg, key)
    assert verify(theirs + msg, key)
    assert ours == theirs
    # ...and the fast path left dkimpy's module alone: its RSA is still its own.
    assert dkim.RSASSA_PKCS1_v1_5_sign is dkim.crypto.RSASSA_PKCS1_v1_5_sign
    assert dkim.parse_pem_private_key is dkim.crypto.parse_pem_private_key


LAID_OUT = [
    pytest.param(message(), id="digest"),
    pytest.param(message(filler=0), id="short"),
    pytest.param(
        message().replace(b"X-Campaign: 42", b"Reply-To: desk@news.example.org\r\nCc: x@y.example"),
        id="reply-to-and-an-unsigned-cc",
    ),
    pytest.param(message().replace(b"To: ", b"To: a@b.example\r\nTo: "), id="two-to"),
    pytest.param(
        message().replace(b"List-Id: Example News", b"List-Id:   Example \t News\r\n\t (list)"),
        id="odd-white-space-and-folds",
    ),
    pytest.param(message() + b"\r\n\r\n\r\n", id="trailing-blank-lines"),
]


@pytest.mark.parametrize("msg", LAID_OUT)
def test_the_laid_out_path_makes_what_dkimpy_makes(
    signer: DkimSigner, key: Key, msg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages laid out by personalize.py are signed without dkimpy's per-call work; the
    header must be byte for byte dkimpy's own, at the same t=."""
    from newsletter.delivery.signing import _CrlfDKIM

    monkeypatch.setattr(time, "time", lambda: 1_740_992_400.0)
    include = signer.include(name for name, _ in dkim.rfc822_parse(msg)[0])
    theirs: bytes = dkim.sign(
        msg,
        SELECTOR.encode(),
        DOMAIN.encode(),
        key.pem,
        canonicalize=(b"relaxed", b"simple"),
        include_headers=include,
    )
    ours = signer.signature_header(msg, crlf_only=True)
    assert ours == theirs
    assert verify(ours + msg, key)
    # ...and the path through dkimpy itself gives the same.
    d = _CrlfDKIM.fresh(msg, frozenset(DEFAULT_HEADERS))
    assert (
        d.sign(SELECTOR.encode(), DOMAIN.encode(), signer._key, include_headers=include) == theirs
    )


def test_messages_the_laid_out_path_does_not_take_go_through_dkimpy(
    signer: DkimSigner, key: Key
) -> None:
    odd = b"From someone Mon Mar  3 09:00:00 2025\r\n" + message()  # an mbox line first
    assert signer._laid_out(odd) is None
    assert verify(signer.signature_header(odd, crlf_only=True) + odd, key)


def test_pkcs8_key_and_threads(key: Key) -> None:
    pkcs8 = serialization.load_pem_private_key(key.pem, password=None).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    shared = DkimSigner(DOMAIN, SELECTOR, pkcs8)
    messages = [message(UNSUBSCRIBE + str(i).encode(), filler=i) for i in range(40)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        signed = list(pool.map(shared.sign, messages))
    assert all(s.endswith(m) and verify(s, key) for s, m in zip(signed, messages, strict=True))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(message(), id="crlf"),
        pytest.param(message().replace(CRLF, b"\n"), id="lf-only"),
        pytest.param(message().replace(b"An item", b"An\nitem", 1), id="bare-lf-in-body"),
        pytest.param(b"From: a@b.example\r\nSubject: x\r\n", id="no-body"),
        pytest.param(b"From: a@b.example\r\n\r\n", id="empty-body"),
        pytest.param(b"From: a@b.example\r\n\r\n\r\nbody\r\n\r\n\r\n", id="blank-lines"),
        pytest.param(b"\r\nFrom: a@b.example\r\n\r\nbody\r\n", id="leading-blank"),
        pytest.param(b"From: a@b.example\r\n\tfolded\r\n\r\nx\ry\r\n", id="folded-lone-cr"),
    ],
)
def test_parse_shortcut_matches_dkimpy(raw: bytes) -> None:
    """The signer's parse of a message is exactly dkimpy's rfc822_parse."""
    from newsletter.delivery.signing import _OpenSSLDKIM

    parsed = _OpenSSLDKIM(raw)
    headers, body = dkim.rfc822_parse(raw)
    assert (parsed.headers, parsed.body) == (headers, body)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(message(), id="digest"),
        pytest.param(message().replace(CRLF, b"\n"), id="lf-only"),
        pytest.param(
            b"From someone Mon Mar  3 09:00:00 2025\r\nFrom: a@b.example\r\nX-Junk: 1\r\n"
            b"\tfolded junk\r\nTo: c@d.example\r\nSubject: one\r\n to:  fold\r\n"
            b"TO: again@d.example\r\n\r\nbody\r\n",
            id="mbox-line-folds-and-repeats",
        ),
        pytest.param(
            b"From: a@b.example\r\nX-Junk: 1\r\n\tfolded junk\r\nTo: c@d.example\r\n"
            b"Subject: one\r\n  two\r\n\tthree\r\nX-After: 2\r\n\r\nbody\r\n",
            id="folded-fields-crlf",
        ),
    ],
)
def test_only_signed_fields_reach_dkimpy(raw: bytes) -> None:
    """The preselection drops unsigned fields (with their folded lines) and nothing else."""
    from newsletter.delivery.signing import _OpenSSLDKIM

    wanted = frozenset(DEFAULT_HEADERS)
    parsed = _OpenSSLDKIM(raw, wanted)
    headers, body = dkim.rfc822_parse(raw)
    assert parsed.headers == [h for h in headers if h[0].lower() in wanted]
    assert parsed.body == body
    assert len(parsed.headers) < len(headers)


def test_lf_message_still_verifies(signer: DkimSigner, key: Key) -> None:
    lf = message().replace(CRLF, b"\n")
    assert verify(signer.sign(lf), key)


def skeleton(tail: bytes = b".dotted line\r\n") -> tuple[bytes, ...]:
    """A digest's fixed bytes around one slot, the List-Unsubscribe address, as
    personalize.Personalizer.skeleton gives them."""
    marker = b"@@slot@@"
    return tuple((message(marker) + tail).split(marker))


async def test_signing_processes_sign_batches_in_order(signer: DkimSigner, key: Key) -> None:
    from newsletter.content.layout import assemble
    from newsletter.delivery.signing import SigningPool

    parts = skeleton()
    slot_values = [[UNSUBSCRIBE + str(n).encode()] for n in range(40)]
    pool = await SigningPool.start(signer, parts, processes=2, batch=16)
    try:
        headers = await asyncio.gather(*pool.sign_all(slot_values))
    finally:
        await pool.close()
    assert all(c.proc.returncode == 0 for c in pool.children)  # they ended when told to
    for values, header in zip(slot_values, headers, strict=True):
        msg = assemble(parts, values)
        assert verify(header + msg, key)  # each header belongs to its own message
    assert not verify(headers[0] + assemble(parts, slot_values[1]), key)


async def test_a_signing_process_that_dies_fails_its_messages(signer: DkimSigner) -> None:
    from newsletter.delivery.signing import SigningFailed, SigningPool

    pool = await SigningPool.start(signer, skeleton(), processes=1)
    try:
        (child,) = pool.children
        child.proc.kill()
        await child.reader  # it notices the end of the pipe
        (future,) = pool.sign_all([[UNSUBSCRIBE]])
        with pytest.raises(SigningFailed, match="signing process"):
            await future
    finally:
        await pool.close()
