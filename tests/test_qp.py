"""Quoted-printable bodies with slots: any text, any values, lines of at most 76, and the same text back."""

from __future__ import annotations

import binascii
import re

from hypothesis import example, given
from hypothesis import strategies as st

from newsletter.content import qp
from newsletter.content.compiler import slot, slot_pattern
from newsletter.content.layout import assemble

NONCE = "0123456789ab"
PATTERN = slot_pattern(NONCE)
NAMES = ["name", "view", "unsubscribe", "vote1"]

# Text as templates and items make it: ASCII, Chinese, the characters QP treats specially.
CHARS = st.sampled_from(list("ab. =\t-From<>\"'&;:/?#")) | st.characters(
    codec="utf-8", exclude_categories=["Cs"]
)
TEXT = st.text(CHARS, max_size=300)
VALUE = st.text(CHARS, max_size=200) | st.sampled_from(
    [
        "",
        ".Dot",
        "From here",
        "王芳",
        "https://news.example.org/v/AQG6ogEBAQEBAgD" + "x" * 80,
        "https://example.org/archive/3?t=AQO6ogEBAwE",
        "trailing space ",
        "=" * 40,
        "." * 90,
    ]
)


@st.composite
def template(draw: st.DrawFn) -> tuple[str, list[str]]:
    """Text with slots at random places: (the text, the slot names in order)."""
    pieces = draw(st.lists(st.tuples(TEXT, st.sampled_from(NAMES)), max_size=6))
    tail = draw(TEXT)
    text = "".join(t + slot(NONCE, name) for t, name in pieces) + tail
    return text, [name for _, name in pieces]


def decode(encoded: bytes) -> str:
    # binascii's decoder, not ours: soft breaks joined, =XX turned back into bytes.
    return binascii.a2b_qp(encoded).decode()


@given(template(), st.dictionaries(st.sampled_from(NAMES), VALUE, min_size=len(NAMES)))
@example(("Dear " + slot(NONCE, "name") + ",\n", ["name"]), dict.fromkeys(NAMES, "." * 90))
@example(("x" * 74 + "=" + slot(NONCE, "view"), ["view"]), dict.fromkeys(NAMES, "=" * 80))
@example((slot(NONCE, "name"), ["name"]), dict.fromkeys(NAMES, "\r"))
def test_any_text_and_values_encode_within_76_and_decode_back(
    case: tuple[str, list[str]], values: dict[str, str]
) -> None:
    text, names = case
    literals, found = qp.encode(text, PATTERN)
    assert found == names
    filled = assemble(literals, [qp.value(values[n]) for n in names])
    assert filled.isascii()
    for line in filled.split(b"\r\n"):
        assert len(line) <= qp.LIMIT, line
        assert not line.startswith(b"."), line  # dot-stuffing never has to touch a body
        assert not line.startswith(b"From "), line
        assert b"\r" not in line
        assert b"\n" not in line
        assert not line.endswith((b" ", b"\t")), line  # RFC 2045 §6.7 (3)
    # The text's line ends become CRLF; a value's characters, even CR or LF, are data,
    # written as =0D and =0A, and come back as they were.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")
    expected = PATTERN.sub(lambda m: values[m.group(1)], lines)
    assert decode(filled) == expected


@given(VALUE)
def test_a_value_fills_whole_lines_of_its_own(value: str) -> None:
    encoded = qp.value(value)
    assert encoded.endswith(b"=\r\n")  # a soft break: the text after it starts a new line
    lines = encoded.split(b"\r\n")[:-1]
    assert all(len(line) <= qp.LIMIT and line.endswith(b"=") for line in lines)
    assert decode(encoded) == value


def test_an_equals_sign_escape_is_never_cut() -> None:
    for offset in range(4):
        encoded = qp.value("x" * offset + "=" * 60)
        for line in encoded.split(b"\r\n")[:-1]:
            assert re.fullmatch(rb"(?:x*)(?:=3D)*=", line), line
