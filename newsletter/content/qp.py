"""Quoted-printable (RFC 2045 §6.7) bodies laid out once, with member slots kept whole.

A body is encoded once per issue. Each slot is put on a line of its own: the text before it
ends in a soft line break ("=" CRLF), and its value, encoded per member by `value`, ends in
one too, so a value of any length fills whole lines of at most 76 characters and the text
after it starts a fresh line. No line of a body ever passes 76 characters, whatever the
values, and every byte is 7bit: no relay has to re-encode it (which would break DKIM).

No line starts with "." (escaped as =2E), so SMTP dot-stuffing never touches a body, and none
with "From " (=46rom), which mbox stores would mangle.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LIMIT = 76  # RFC 2045 §6.7 (5): encoded lines are at most 76 characters
_WIDTH = LIMIT - 1  # a line followed by a soft break: 75 characters and the "="
_SOFT = b"=\r\n"
_CRLF = b"\r\n"
_EQUALS, _DOT = 0x3D, 0x2E

# Bytes that stand for themselves: printable ASCII but "=", and space and tab (except at a
# line's end, handled apart). Everything else, UTF-8 included, becomes =XX.
_UNSAFE = re.compile(rb"[^\t\x20-\x3c\x3e-\x7e]+")
_PLAIN = re.compile(rb"[\t\x20-\x3c\x3e-\x7e]*")
_PRINTABLE = re.compile(rb"[\t\x20-\x7e]*")
_ESCAPES = [b"=%02X" % b for b in range(256)]


def _escape_run(m: re.Match[bytes]) -> bytes:
    return b"".join([_ESCAPES[b] for b in m[0]])


def escape(data: bytes) -> bytes:
    """Every byte that may not stand for itself as =XX (white space left as it is)."""
    return data if _PLAIN.fullmatch(data) else _UNSAFE.sub(_escape_run, data)


def _line_start(escaped: bytes) -> bytes:
    if escaped[:1] == b".":
        return b"=2E" + escaped[1:]
    if escaped[:5] == b"From ":
        return b"=46" + escaped[1:]
    return escaped


def wrap(e: bytes, last: int = LIMIT) -> list[bytes]:
    """Escaped text as lines joined by soft breaks: each but the last at most 75 characters
    (76 with its "="), the last at most `last`; never cut inside an =XX escape, and no line
    after the first starts with "." or "From " (they are escaped where a cut puts them)."""
    lines: list[bytes] = []
    pos = 0
    while len(e) - pos > last:
        cut = pos + _WIDTH
        if e[cut - 1] == _EQUALS:
            cut -= 1
        elif e[cut - 2] == _EQUALS:
            cut -= 2
        lines.append(e[pos:cut])
        pos = cut
        if e[pos] == _DOT or e[pos : pos + 5] == b"From ":
            e = e[:pos] + _ESCAPES[e[pos]] + e[pos + 1 :]
    lines.append(e[pos:])
    return lines


def value(text: str) -> bytes:
    """One slot's value as quoted-printable lines, each ending in a soft line break: it sits
    on lines of its own, so it needs no room on anyone else's. Under a microsecond for a
    link; this runs for every slot of every message."""
    raw = text.encode()
    if _PRINTABLE.fullmatch(raw):  # links and ASCII names: at most "=" to escape
        if b"=" in raw:
            raw = raw.replace(b"=", b"=3D")
        if len(raw) <= _WIDTH and raw[:1] != b"." and raw[:5] != b"From ":
            return raw + _SOFT
    else:
        raw = escape(raw)
    return _SOFT.join(wrap(_line_start(raw), _WIDTH)) + _SOFT


def _hard_line(line: bytes, before_slot: bool, at_start: bool) -> list[bytes]:
    """One piece of a body line (the text between slots) as encoded lines."""
    e = escape(line)
    if not before_slot and e[-1:] in (b" ", b"\t"):  # RFC 2045 §6.7 (3): not at a line's end
        e = e[:-1] + _ESCAPES[e[-1]]
    if at_start:
        e = _line_start(e)
    return wrap(e, _WIDTH if before_slot else LIMIT)


def encode(text: str, pattern: re.Pattern[str] | None = None) -> tuple[list[bytes], list[str]]:
    """A body as quoted-printable: (literals, slot names) with len(literals) == len(names) + 1,
    the slots (matches of `pattern`, group 1 their name) between the literals. Filled with
    `value(...)` of each slot's value, every line is at most 76 characters long."""
    literals: list[bytes] = []
    names: list[str] = []
    out: list[bytes] = []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for n, line in enumerate(lines):
        parts: Sequence[str] = pattern.split(line) if pattern else (line,)
        # parts: text, slot name, text, slot name, ..., text
        for i in range(0, len(parts), 2):
            piece = parts[i].encode()
            before_slot = i + 1 < len(parts)
            if piece or not before_slot:
                encoded = _hard_line(piece, before_slot, at_start=True)
                out.append(_SOFT.join(encoded))
                if before_slot:
                    out.append(_SOFT)  # the slot starts a line of its own
            if before_slot:
                literals.append(b"".join(out))
                out = []
                names.append(parts[i + 1])
        if n + 1 < len(lines):
            out.append(_CRLF)
    literals.append(b"".join(out))
    return literals, names
