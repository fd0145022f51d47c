"""Fill a compiled issue's slots for one member → the message's bytes, headers included.

The MIME skeleton (headers, boundary, both parts) is laid out once per issue and cut at
every slot into literal byte strings (layout.alternative). A member's message is then one
bytes.join over those literals and that member's values: no MIME objects, no rendering, no
CSS, per member. Bodies are quoted-printable with each slot on lines of its own, so every
line stays within 76 characters whatever the values, and no byte is 8bit.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import html

from newsletter.config import Settings
from newsletter.content import qp
from newsletter.content.compiler import Compiled, slot
from newsletter.content.layout import (
    CRLF,
    HEADER_LIMIT,
    Key,
    Wire,
    alternative,
    assemble,
    dot_stuff,
    encode_phrase,
    encode_unstructured,
    fold,
    format_address,
    new_boundary,
)
from newsletter.content.links import LinkBuilder
from newsletter.content.verp import Verp
from newsletter.deliverability import is_https_or_loopback
from newsletter.storage.ledger import Recipient
from newsletter.tokens import Signer

_TO_ROOM = HEADER_LIMIT - len("To: ")
_LINK_ROOM = HEADER_LIMIT - len("List-Unsubscribe: <>")


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
        # Signed VERP needs the signing key; a preview (no signer) uses the plain address.
        self.verp = Verp(bounce, signer) if settings.delivery.verp and signer else None
        self.boundary = new_boundary()
        self._date_cache: tuple[int, str] = (-1, "")
        self._last_tag: tuple[int, str] = (-1, "")
        self._literals, self._keys = self._skeleton(compiled, settings)
        # Per slot: the value's name (in the HTML part a name, and a link's target, are
        # HTML-escaped) and whether it goes in a header as it is (else quoted-printable).
        self._plan = [
            (
                f"{name}_html"
                if where == "html" and (name == "name" or name.startswith("link"))
                else name,
                where == "header",
            )
            for name, where in self._keys
        ]
        # The same skeleton in DATA form (pool.Wire): dot-stuffed once, terminated once.
        self._wire = [dot_stuff(lit) for lit in self._literals]
        self._wire[-1] += b".\r\n"
        # Raw (header) slots at a line's start, whose values dot-stuffing would have to see;
        # body slots are quoted-printable, and qp.value never starts a line with ".".
        self._line_start = {
            i
            for i, (lit, (_, where)) in enumerate(zip(self._literals, self._keys, strict=False))
            if lit.endswith(b"\r\n") and where == "header"
        }

    def _skeleton(self, compiled: Compiled, settings: Settings) -> tuple[list[bytes], list[Key]]:
        def s(name: str) -> str:
            return slot(compiled.nonce, name)

        lst = settings.list
        headers = [
            f"From: {format_address(lst.name, lst.from_address, 'From')}",
            f"To: {s('to')}",  # folded per member when long (values)
            f"Subject: {encode_unstructured(compiled.subject, 'Subject')}",
            f"Date: {s('date')}",
            f"Message-ID: {s('msgid')}",
            f"List-Id: {encode_phrase(lst.name, 'List-Id')} <{lst.id}>",  # RFC 2919
            f"List-Unsubscribe: {s('unsubscribe')}",  # RFC 2369; the value is "<link>"
        ]
        if is_https_or_loopback(self.base):
            # RFC 8058 one-click needs an https URI (config.toml refuses anything else but
            # http on loopback, where no mailbox provider ever posts).
            headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        headers += [
            f"List-Archive: <{self.base}/archive>",
            # Gmail's feedback loop groups complaints by these fields: campaign:list:type:sender.
            f"Feedback-ID: {self.issue_id}:{lst.id}:newsletter:{self.domain}",
        ]
        if lst.reply_to:
            headers.append(f"Reply-To: {lst.reply_to}")
        return alternative(
            [fold(h) for h in headers],
            compiled.text,
            compiled.html,
            self.boundary,
            compiled.slot_pattern,
        )

    def _date(self) -> str:
        now = dt.datetime.now(dt.UTC)
        second = int(now.timestamp())
        if self._date_cache[0] != second:
            self._date_cache = (second, email.utils.format_datetime(now.replace(microsecond=0)))
        return self._date_cache[1]

    def envelope_from(self, member_id: int) -> str:
        """The MAIL FROM (and so the Return-Path). With VERP, one per member and issue, so a
        bounce names who bounced without parsing the DSN: bounces+<issue>-<member>-<tag>@domain,
        the tag a MAC of the two ids (content/verp.py), so a forged bounce names no one."""
        if self.verp is None:
            return f"{self._bounce_local}@{self._bounce_domain}"
        return self.verp.address(self.issue_id, member_id, self._tag(member_id))

    def message_id(self, member_id: int) -> str:
        """<issue.member.nonce.tag@domain>: unique per member of an issue. With a signer it
        ends in the VERP tag, so a bounce whose VERP address was lost can still be tied to a
        member by the returned message (services/bounces.py), and not by a forger."""
        if self.signer is None:
            return f"<{self.issue_id}.{member_id}.{self.compiled.nonce}@{self.domain}>"
        tag = self._tag(member_id)
        return f"<{self.issue_id}.{member_id}.{self.compiled.nonce}.{tag}@{self.domain}>"

    def _tag(self, member_id: int) -> str:
        # A message needs its tag twice (Return-Path, Message-ID): the last one is kept.
        if self._last_tag[0] != member_id:
            assert self.signer is not None
            self._last_tag = (member_id, self.signer.tag(f"{self.issue_id}-{member_id}"))
        return self._last_tag[1]

    def values(self, r: Recipient) -> dict[str, str]:
        """Every slot's value for one member."""
        name = r.name or self.fallback_name
        to = format_address(r.name, r.email, "To")
        values = {
            "to": to if len(to) <= _TO_ROOM else fold("To: " + to)[4:],
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
        for i, url in enumerate(links.clicks(issue, member, self.compiled.links)):
            values[f"link{i}"] = url
            # A signed /r/ link needs no escaping; an inert preview's target may hold "&".
            values[f"link{i}_html"] = url if self.signer else html.escape(url)
        return values

    @property
    def skeleton(self) -> tuple[bytes, ...]:
        """The plain message's fixed bytes; assemble(skeleton, slots(r)[1]) is message(r)."""
        return tuple(self._literals)

    def slots(self, r: Recipient) -> tuple[str, list[bytes]]:
        """The Message-ID and one member's slot values, in skeleton order: as they are in the
        headers, quoted-printable (each on lines of its own) in the bodies."""
        v = self.values(r)
        encoded: dict[str, bytes] = {}
        out = []
        for name, in_header in self._plan:
            if in_header:
                value = v[name]
                if name == "unsubscribe":
                    # Folded onto a line of its own when the line would pass 78 characters.
                    value = f"<{value}>" if len(value) <= _LINK_ROOM else f"{CRLF} <{value}>"
                out.append(value.encode())
                continue
            text = v[name]
            data = encoded.get(text)
            if data is None:  # a link is in both parts, some twice, under two names: encoded once
                data = encoded[text] = qp.value(text)
            out.append(data)
        return v["msgid"], out

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
            v.update(
                {
                    k[:-5]: val
                    for k, val in v.items()
                    if k.startswith("link") and k.endswith("_html")
                }
            )
        return self.compiled.slot_pattern.sub(lambda m: v[m.group(1)], text)
