"""The one link builder: every URL a member is given, in mail, on the archive page and in previews.

With a signer, links carry the member's signed token; without one (previews, a sample reader)
they point at inert pages, so a preview can never act for anyone.
"""

from __future__ import annotations

from newsletter.tokens import Kind, Signer


class LinkBuilder:
    def __init__(self, base_url: str, signer: Signer | None) -> None:
        self.base = base_url.rstrip("/")
        self.signer = signer

    @property
    def inert(self) -> bool:
        return self.signer is None

    def page(self, path: str) -> str:
        """An absolute URL for a public page (path starts with "/")."""
        return self.base + path

    def archive(self, issue_id: int | None = None) -> str:
        return self.page("/archive" if issue_id is None else f"/archive/{issue_id}")

    def survey(self, survey_id: int) -> str:
        return self.page(f"/survey/{survey_id}")

    def subscribe(self) -> str:
        return self.page("/subscribe")

    def unsubscribe(self, member_id: int, issue_id: int) -> str:
        if self.signer is None:
            return self.page("/preview/unsubscribe")
        return self.page(f"/u/{self.signer.make(Kind.UNSUBSCRIBE, member_id, issue_id)}")

    def preferences(self, member_id: int, issue_id: int = 0) -> str:
        """The member's preference page (issue 0: not from an issue, e.g. a signed-in member)."""
        if self.signer is None:
            return self.page("/preview/preferences")
        return self.page(f"/p/{self.signer.make(Kind.PREFERENCES, member_id, issue_id)}")

    def address(self, member_id: int, nonce: int) -> str:
        """The page where a new address confirms a change of address (mailed to it)."""
        if self.signer is None:
            return self.page("/preview/address")
        return self.page(f"/a/{self.signer.make(Kind.ADDRESS, member_id, nonce)}")

    def view(self, issue_id: int, member_id: int) -> str:
        if self.signer is None:
            return self.archive()
        token = self.signer.make(Kind.VIEW, issue_id, member_id)
        return f"{self.archive(issue_id)}?t={token}"

    def trap(self, member_id: int, issue_id: int) -> str:
        if self.signer is None:
            return self.page("/preview/trap")
        return self.page(f"/t/{self.signer.make(Kind.TRAP, member_id, issue_id)}")

    def vote(self, survey_id: int, member_id: int, option: int) -> str:
        if self.signer is None:
            return self.page(f"/preview/vote/{option}")
        return self.page(f"/v/{self.signer.make(Kind.VOTE, survey_id, member_id, option)}")

    def click(self, issue_id: int, member_id: int, link: int, target: str) -> str:
        """The /r/ redirect to the issue's link number `link` (its target when inert)."""
        if self.signer is None:
            return target
        return self.page(f"/r/{self.signer.make(Kind.CLICK, issue_id, member_id, link)}")

    def clicks(self, issue_id: int, member_id: int, targets: tuple[str, ...]) -> list[str]:
        """click() for every link of the issue, signed as a series (tokens.make_series)."""
        if self.signer is None:
            return list(targets)
        base = self.page("/r/")
        tokens = self.signer.make_series(Kind.CLICK, issue_id, member_id, last=range(len(targets)))
        return [base + token for token in tokens]

    def confirm(self, member_id: int) -> str:
        if self.signer is None:
            return self.page("/preview/confirm")
        return self.page(f"/c/{self.signer.make(Kind.CONFIRM, member_id)}")

    def board(self, member_id: int, issue_id: int) -> str:
        """The board link an issue carries: a page whose button signs the member in."""
        if self.signer is None:
            return self.page("/board")
        return self.page(f"/b/{self.signer.make(Kind.BOARD, member_id, issue_id)}")

    def signin(self, member_id: int, signin_id: int) -> str:
        if self.signer is None:
            return self.page("/signin")
        return self.page(f"/s/{self.signer.make(Kind.SIGNIN, member_id, signin_id)}")

    def notices(self, member_id: int) -> str:
        """The page that stops a member's reply notices (and RFC 8058's one-click POST)."""
        if self.signer is None:
            return self.page("/board")
        return self.page(f"/n/{self.signer.make(Kind.NOTICES, member_id)}")

    def thread(self, message_id: int) -> str:
        return self.page(f"/board/{message_id}")
