"""Fill a compiled issue's slots for one member → the message's bytes, headers included.

The MIME skeleton (headers, boundary, both parts) is laid out once per issue and cut at
every slot into literal byte strings. A member's message is then one bytes.join over those
literals and that member's values: no MIME objects, no rendering, no CSS, per member.
Bodies are 8bit UTF-8 (RFC 6152), so the server must offer 8BITMIME.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import html
import secrets

from newsletter.config import Settings
from newsletter.content.compiler import Compiled, slot
from newsletter.content.layout import (
    CRLF,
    Wire,
    assemble,
    dot_stuff,
    encode_phrase,
    encode_unstructured,
    format_address,
    normalize_newlines,
)
from newsletter.content.links import LinkBuilder
from newsletter.storage.ledger import Recipient
from newsletter.tokens import Signer


class Personalizer:
    """Per-issue: the skeleton. Per member: `message(recipient)` → (Message-ID, bytes)."""

    def __init__(
        self,
        compiled: Compiled,
        settings: Settings,
        signer: Signer | None,
        issue_id: int,
        *,
        fallback_name: str = "reader",
    ) -> None:
        self.compiled = compiled
        self.issue_id = issue_id
        self.signer = signer
        self.links = LinkBuilder(settings.list.base_url, signer)
        self.fallback_name = fallback_name
        self.base = settings.list.base_url.rstrip("/")
        self.domain = settings.list.from_address.rsplit("@", 1)[1]
        bounce = settings.list.return_path or settings.list.from_address
        self._bounce_local, self._bounce_domain = bounce.rsplit("@", 1)
        self.verp = settings.delivery.verp
        self.boundary = "=_nl_" + secrets.token_hex(12)
        self._date_cache: tuple[int, str] = (-1, "")
        self._literals, self._keys = self._skeleton(compiled, settings)
        # The same skeleton in DATA form (pool.Wire): dot-stuffed once, terminated once.
        self._wire = [dot_stuff(lit) for lit in self._literals]
        self._wire[-1] += b".\r\n"
        self._line_start = {i for i, lit in enumerate(self._literals[:-1]) if lit.endswith(b"\r\n")}

    def _skeleton(self, compiled: Compiled, settings: Settings) -> tuple[list[bytes], list[str]]:
        def s(name: str) -> str:
            return slot(compiled.nonce, name)

        lst = settings.list
        headers = [
            f"From: {format_address(lst.name, lst.from_address, 'From')}",
            f"To: {s('to')}",
            f"Subject: {encode_unstructured(compiled.subject, 'Subject')}",
            f"Date: {s('date')}",
            f"Message-ID: {s('msgid')}",
            f"List-Id: {encode_phrase(lst.name, 'List-Id')} <{lst.id}>",  # RFC 2919
            f"List-Unsubscribe: <{s('unsubscribe')}>",  # RFC 2369
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",  # RFC 8058
            f"List-Archive: <{self.base}/archive>",
            # Gmail's feedback loop groups complaints by these fields: campaign:list:type:sender.
            f"Feedback-ID: {self.issue_id}:{lst.id}:newsletter:{self.domain}",
        ]
        if lst.reply_to:
            headers.append(f"Reply-To: {lst.reply_to}")
        headers += [
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{self.boundary}"',
        ]
        b = self.boundary

        def part(kind: str) -> str:
            return (
                f'--{b}{CRLF}Content-Type: text/{kind}; charset="utf-8"{CRLF}'
                f"Content-Transfer-Encoding: 8bit{CRLF}{CRLF}"
            )

        text_body = normalize_newlines(compiled.text)
        html_body = normalize_newlines(compiled.html)
        pieces = [
            (
                CRLF.join(headers)
                + CRLF * 2
                + "This is a multi-part message in MIME format."
                + CRLF,
                "",
            ),
            (part("plain") + text_body + CRLF, ""),
            (part("html") + html_body + CRLF + f"--{b}--" + CRLF, "_html"),
        ]
        literals: list[bytes] = []
        keys: list[str] = []
        pattern = compiled.slot_pattern
        pending = ""
        for chunk, suffix in pieces:
            pos = 0
            for m in pattern.finditer(chunk):
                pending += chunk[pos : m.start()]
                literals.append(pending.encode())
                pending = ""
                name = m.group(1)
                keys.append(name + suffix if name == "name" else name)
                pos = m.end()
            pending += chunk[pos:]
        literals.append(pending.encode())
        return literals, keys

    def _date(self) -> str:
        now = dt.datetime.now(dt.UTC)
        second = int(now.timestamp())
        if self._date_cache[0] != second:
            self._date_cache = (second, email.utils.format_datetime(now.replace(microsecond=0)))
        return self._date_cache[1]

    def envelope_from(self, member_id: int) -> str:
        """The MAIL FROM (and so the Return-Path). With VERP, one per member and issue, so a
        bounce names who bounced without parsing the DSN: bounces+<issue>-<member>@domain."""
        if not self.verp:
            return f"{self._bounce_local}@{self._bounce_domain}"
        return f"{self._bounce_local}+{self.issue_id}-{member_id}@{self._bounce_domain}"

    def message_id(self, member_id: int) -> str:
        return f"<{self.issue_id}.{member_id}.{self.compiled.nonce}@{self.domain}>"

    def values(self, r: Recipient) -> dict[str, str]:
        """Every slot's value for one member."""
        name = r.name or self.fallback_name
        values = {
            "to": format_address(r.name, r.email, "To"),
            "date": self._date(),
            "msgid": self.message_id(r.member_id),
            "name": name,
            "name_html": html.escape(name, quote=False),
        }
        links, member, issue = self.links, r.member_id, self.issue_id
        values["unsubscribe"] = links.unsubscribe(member, issue)
        values["prefs"] = links.preferences(member, issue)
        values["view"] = links.view(issue, member)
        values["trap"] = links.trap(member, issue)
        values["board"] = links.board(member, issue)
        survey_id = self.compiled.survey_id or 0
        for pos in self.compiled.vote_positions:
            values[f"vote{pos}"] = links.vote(survey_id, member, pos)
        return values

    @property
    def skeleton(self) -> tuple[bytes, ...]:
        """The plain message's fixed bytes; assemble(skeleton, slots(r)[1]) is message(r)."""
        return tuple(self._literals)

    def slots(self, r: Recipient) -> tuple[str, list[bytes]]:
        """The Message-ID and one member's slot values, in skeleton order."""
        v = self.values(r)
        return v["msgid"], [v[key].encode() for key in self._keys]

    def message(self, r: Recipient) -> tuple[str, bytes]:
        message_id, values = self.slots(r)
        return message_id, assemble(self._literals, values)

    def wire(self, r: Recipient) -> tuple[str, Wire]:
        """The message in DATA form, for pool.transmit: no per-message normalising passes."""
        message_id, values = self.slots(r)
        return message_id, self.wire_from(values)

    def wire_from(self, values: list[bytes]) -> Wire:
        """The DATA form of the message with these slot values: unwire() of it is the plain
        message assemble(skeleton, values), which is what a DKIM signer is given."""
        for i in self._line_start:
            if values[i].startswith(b"."):
                values = [*values[:i], b"." + values[i], *values[i + 1 :]]
        return Wire(assemble(self._wire, values))

    def fill_text(self, text: str, r: Recipient, *, html_part: bool) -> str:
        """Fill the slots of one part as a string (previews and the archive use this)."""
        v = self.values(r)
        if html_part:
            v["name"] = v["name_html"]
        return self.compiled.slot_pattern.sub(lambda m: v[m.group(1)], text)
