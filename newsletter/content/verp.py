"""Signed VERP return paths: bounces+ISSUE-MEMBER-TAG@domain, made per message and read back.

With VERP (Variable Envelope Return Path) each message has its own envelope sender, so the
bounce that comes back to it names the issue and the member without parsing anything. The
tag is a short MAC over "ISSUE-MEMBER" (tokens.Signer.tag), so a bounce sent to an address
someone guessed (bounces+1-2@…) or altered (bounces+1-3-TAG@…) names nobody: an attacker
cannot suppress a member by mailing the bounce address. The tag is lower-case base32
because many hosts fold the case of a local part (RFC 5321 §2.4 lets them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from newsletter.tokens import TAG_LENGTH, Signer

# ISSUE-MEMBER-TAG after the "+": decimal ids without leading zeros, the tag in base32.
_DETAIL = re.compile(
    rf"([1-9][0-9]{{0,17}})-([1-9][0-9]{{0,17}})-([a-z2-7]{{{TAG_LENGTH}}})", re.IGNORECASE
)
# An issue message's Message-ID: <ISSUE.MEMBER.NONCE.TAG@domain> (content/personalize.py).
_MESSAGE_ID = re.compile(
    rf"<([1-9][0-9]{{0,17}})\.([1-9][0-9]{{0,17}})\.[0-9a-f]+\.([a-z2-7]{{{TAG_LENGTH}}})@[^<>@\s]+>",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class VerpMatch:
    issue_id: int
    member_id: int


class Verp:
    """The return paths of one site: `address` makes one, `read` checks one."""

    def __init__(self, return_path: str, signer: Signer) -> None:
        self.local, self.domain = return_path.rsplit("@", 1)
        self.signer = signer
        self._prefix = (self.local + "+").lower()

    def address(self, issue_id: int, member_id: int, tag: str | None = None) -> str:
        """The envelope sender of one member's message of one issue (`tag`, when the caller
        has it already, is signer.tag("ISSUE-MEMBER"))."""
        detail = f"{issue_id}-{member_id}"
        return f"{self.local}+{detail}-{tag or self.signer.tag(detail)}@{self.domain}"

    def message_id(self, message_id: str) -> VerpMatch | None:
        """The issue and member a genuine issue Message-ID names (<I.M.NONCE.TAG@domain>)."""
        found = _MESSAGE_ID.fullmatch(message_id.strip())
        if found is None:
            return None
        issue, member, tag = found.groups()
        if not self.signer.tag_matches(f"{issue}-{member}", tag):
            return None
        return VerpMatch(int(issue), int(member))

    def read(self, address: str) -> VerpMatch | str:
        """The issue and member a genuine return path names, or why it names no one."""
        address = address.strip().strip("<>").strip()
        local, at, domain = address.rpartition("@")
        if not at:
            return "not an address"
        if domain.lower().rstrip(".") != self.domain.lower():
            return f"not this site's bounce domain ({self.domain})"
        local = local.lower()
        if not local.startswith(self._prefix):
            return f"not a VERP address of {self.local}@{self.domain}"
        found = _DETAIL.fullmatch(local[len(self._prefix) :])
        if found is None:
            return "unsigned or malformed VERP address"
        issue, member, tag = found.groups()
        if not self.signer.tag_matches(f"{issue}-{member}", tag):
            return "the VERP address's tag does not match (forged or altered)"
        return VerpMatch(int(issue), int(member))
