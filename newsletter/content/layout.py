"""Message layout: header fields made safe, the MIME skeleton of every message, the DATA form.

Every message the project sends, an issue's or a system message (a confirmation, a sign-in
link, a notice), is laid out by `alternative`: multipart/alternative, a text and an HTML
part, both quoted-printable (qp.py) with lines of at most 76 characters, headers folded to
at most 78. An issue's is laid out once with its member slots open and filled per member
(personalize.py); a system message's is laid out with nothing open (`system_message`).
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import re
import secrets
from collections.abc import Sequence
from email.header import Header

from newsletter.content import qp
from newsletter.errors import HeaderError

CRLF = "\r\n"
_HEADER_UNSAFE = re.compile(r"[\r\n\x00]")
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')


# An encoded-word is at most 75 characters (RFC 2047 §2): "=?utf-8?b?" and "?=" leave 63 for
# base64, which carries 45 bytes. "To: " and a word of 72 fit a 78-character line.
_WORD_BYTES = 45


def encoded_words(text: str) -> str:
    """Text as RFC 2047 "B" encoded-words in UTF-8, folded one word a line (CRLF, space):
    each word at most 75 characters and cut between characters, never inside one. The same
    words email.header.Header writes for a short phrase, without its per-call set-up (a To
    field is made for every message of an issue)."""
    data = text.encode()
    words: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte: back off
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start = end
    return (CRLF + " ").join(words)


def encode_phrase(text: str, header_name: str) -> str:
    """A display name or phrase for a header: RFC 2047 encoded-words when it is not ASCII."""
    if _HEADER_UNSAFE.search(text):
        raise HeaderError(header_name, text)
    # ASCII as it is, quoted where a special would end the phrase (RFC 5322 §3.2.3); encoded
    # when it is not ASCII, or when readers would take it for an encoded-word.
    if text.isascii() and "=?" not in text:
        return f'"{email.utils.quote(text)}"' if _SPECIALS.search(text) else text
    return encoded_words(text)


def format_address(name: str, address: str, header_name: str) -> str:
    if _HEADER_UNSAFE.search(address) or not address.isascii():
        raise HeaderError(header_name, address)
    if not name:
        return address
    return f"{encode_phrase(name, header_name)} <{address}>"


def encode_unstructured(text: str, header_name: str) -> str:
    if _HEADER_UNSAFE.search(text):
        raise HeaderError(header_name, text)
    return Header(
        text, "utf-8" if not text.isascii() else "us-ascii", header_name=header_name
    ).encode(linesep=CRLF)


def dot_stuff(literal: bytes) -> bytes:
    # RFC 5321 §4.5.2: a line that starts with "." gets another one in front.
    return literal.replace(b"\r\n.", b"\r\n..")


class Wire(bytes):
    """A message already in DATA form: CRLF line ends, dot-stuffed, ending with CRLF "." CRLF.

    personalize.py lays out each issue's message once in this form, so the per-message
    line-ending and dot-stuffing passes aiosmtplib would make (two regex scans of the whole
    message, a third of its CPU per message) are not needed.
    """


def assemble(literals: Sequence[bytes], values: Sequence[bytes]) -> bytes:
    """literals[0] + values[0] + literals[1] + ... + literals[-1]."""
    out = [literals[0]]
    for value, literal in zip(values, literals[1:], strict=True):
        out.append(value)
        out.append(literal)
    return b"".join(out)


def unwire(wire: bytes) -> bytes:
    """The plain message a DATA form carries: without the final "." line, dot-stuffing undone
    (for aiosmtplib's own DATA path, which stuffs the message itself)."""
    return bytes(wire[:-3]).replace(b"\r\n..", b"\r\n.")


def message_id(domain: str) -> str:
    """A Message-ID on our own domain (RFC 5322 §3.6.4): random, so it reveals nothing."""
    return f"<{secrets.token_hex(12)}@{domain}>"


HEADER_LIMIT = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters


def fold(field: str, limit: int = HEADER_LIMIT) -> str:
    """A header field ("Name: value") folded at spaces so that no line passes `limit`, where
    it can be (a word longer than a line stays whole). Unfolding restores it exactly."""
    if len(field) <= limit and "\r\n" not in field:
        return field
    out: list[str] = []
    for line in field.split(CRLF):
        while len(line) > limit:
            cut = line.rfind(" ", 1, limit + 1)
            while cut > 0 and line[cut - 1] == " ":
                cut -= 1
            if cut <= 0 or not line[:cut].strip():
                nxt = line.find(" ", limit + 1)
                if nxt == -1:
                    break
                cut = nxt
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return CRLF.join(out)


Key = tuple[str, str]  # (slot name, where: "header", "text" or "html")


def alternative(
    headers: Sequence[str],
    text: str,
    html: str,
    boundary: str,
    pattern: re.Pattern[str] | None = None,
) -> tuple[list[bytes], list[Key]]:
    """The whole message cut at its slots: (literals, keys), len(literals) == len(keys) + 1.

    `headers` are complete fields ("Name: value", folded); slots in them (matches of
    `pattern`) take their values as they are. The text and HTML bodies are encoded as
    quoted-printable with each slot on lines of its own (qp.encode), so their values go
    through qp.value. MIME-Version and the multipart Content-Type are added here.
    """
    head = CRLF.join(
        [
            *headers,
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
        ]
    )
    literals: list[bytes] = []
    keys: list[Key] = []
    pending = b""
    pos = 0
    for m in pattern.finditer(head) if pattern else ():
        literals.append(pending + head[pos : m.start()].encode())
        pending = b""
        keys.append((m.group(1), "header"))
        pos = m.end()
    pending += head[pos:].encode() + b"\r\n\r\nThis is a multi-part message in MIME format.\r\n"
    for subtype, body in (("plain", text), ("html", html)):
        pending += (
            f'--{boundary}{CRLF}Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
            f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}"
        ).encode()
        parts, names = qp.encode(body, pattern)
        for literal, name in zip(parts, names, strict=False):
            literals.append(pending + literal)
            pending = b""
            keys.append((name, "text" if subtype == "plain" else "html"))
        pending += parts[-1] + b"\r\n"
    literals.append(pending + f"--{boundary}--{CRLF}".encode())
    return literals, keys


def new_boundary() -> str:
    return "=_nl_" + secrets.token_hex(12)


def system_message(
    *,
    from_name: str,
    from_address: str,
    to_name: str,
    to_address: str,
    subject: str,
    text: str,
    html: str,
    now: dt.datetime,
    headers: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """(Message-ID, the message's bytes with CRLF lines) for one system message: laid out as
    an issue's message is (`alternative`), with Date, a random Message-ID on the From domain
    and Auto-Submitted: auto-generated (RFC 3834)."""
    if _HEADER_UNSAFE.search(from_address) or not from_address.isascii():
        raise HeaderError("From", from_address)
    msgid = message_id(from_address.rsplit("@", 1)[1])
    fields = [
        f"From: {format_address(from_name, from_address, 'From')}",
        f"To: {format_address(to_name, to_address, 'To')}",
        f"Subject: {encode_unstructured(subject, 'Subject')}",
        f"Date: {email.utils.format_datetime(now.astimezone(dt.UTC).replace(microsecond=0))}",
        f"Message-ID: {msgid}",
        # RFC 3834: made by a program, not a reply to anything; vacation responders stay quiet.
        "Auto-Submitted: auto-generated",
    ]
    for name, value in (headers or {}).items():
        if _HEADER_UNSAFE.search(value) or _HEADER_UNSAFE.search(name):
            raise HeaderError(name, value)
        fields.append(f"{name}: {encode_unstructured(value, name)}")
    literals, _ = alternative([fold(f) for f in fields], text, html, new_boundary())
    (data,) = literals
    return msgid, data
