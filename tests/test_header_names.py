"""Display names in From and To: any name a member may have reads back exactly, on lines of at
most 78 characters, and a line break in a name never reaches a header."""

from __future__ import annotations

import email.header
import email.utils

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from newsletter.content.layout import CRLF, encoded_words, fold, format_address
from newsletter.errors import HeaderError

ADDRESS = "member@example.org"
# Names as members type them: any script, but no control characters (the import refuses line
# breaks; a header cannot hold the others) and no runs or ends of white space, which a display
# name does not keep.
LETTERS = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs"))
NAME = st.text(LETTERS, min_size=1, max_size=80) | st.lists(
    st.text(LETTERS, min_size=1), min_size=2, max_size=6
).map(" ".join)


def read_back(field: str) -> tuple[str, str]:
    """(display name, address) as a mail reader decodes them. email.utils and email.header,
    not the new parser: policy.default keeps a space between two adjacent encoded-words of a
    phrase (it reads the stdlib's own Header output that way too), where RFC 2047 §6.2 says
    the white space between them is not displayed."""
    name, address = email.utils.parseaddr(field.removeprefix("To: ").replace(CRLF, ""))
    return str(email.header.make_header(email.header.decode_header(name))), address


@given(NAME)
@example("王芳")
@example("Maria García")
@example("Bob O'Neil")
@example("Smith, John")
@example('J. "Jack" \\ Smith')
@example("陈" * 40)
@example("é" * 23)  # 46 bytes: a word of 45 must not cut the last é in half
@example("=?utf-8?b?QQ==?=")  # ASCII that reads as an encoded-word
def test_any_name_reads_back_on_short_lines(name: str) -> None:
    field = fold("To: " + format_address(name, ADDRESS, "To"))
    assert field.isascii()
    assert all(len(line) <= 78 for line in field.split(CRLF)), field
    assert read_back(field) == (name, ADDRESS)


@given(st.text(min_size=1, max_size=200).filter(lambda s: not s.isascii()))
def test_encoded_words_are_short_and_whole(text: str) -> None:
    words = encoded_words(text).split(CRLF + " ")
    assert all(len(word) <= 75 for word in words)
    pieces = [email.header.decode_header(word)[0][0] for word in words]
    assert all(isinstance(piece, bytes) for piece in pieces)
    # Each word holds whole characters (each decodes alone), and together they are the text.
    assert "".join(bytes(piece).decode("utf-8") for piece in pieces) == text


@pytest.mark.parametrize("name", ["a\r\nBcc: x@example.org", "a\nb", "a\rb", "a\x00b", "王\n芳"])
def test_a_line_break_in_a_name_is_refused(name: str) -> None:
    with pytest.raises(HeaderError):
        format_address(name, ADDRESS, "To")
