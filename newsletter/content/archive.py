"""An archived issue as a web page: the stored HTML, its slots filled for one member or for anyone.

The stored HTML is cut at its slots once per issue; each view is then a join, as with mail.
A member who follows their own "view online" link sees their own links; anyone else sees
public ones (subscribe instead of unsubscribe, the survey's results instead of vote links).
"""

from __future__ import annotations

import html

from newsletter.content.compiler import Compiled
from newsletter.content.links import LinkBuilder


class ArchivePage:
    def __init__(self, compiled: Compiled, issue_id: int, links: LinkBuilder) -> None:
        self.issue_id = issue_id
        self.links = links
        self.survey_id = compiled.survey_id
        self.vote_positions = compiled.vote_positions
        # On the web page the issue's links lead straight to their targets: only a message's
        # links are counted (through /r/).
        self._targets = {f"link{i}": html.escape(url) for i, url in enumerate(compiled.links)}
        parts = compiled.slot_pattern.split(compiled.html)
        self._literals = parts[0::2]
        self._names = parts[1::2]
        self._public = self._values(None)

    def _values(self, member: tuple[int, str] | None) -> dict[str, str]:
        links, issue = self.links, self.issue_id
        values = {"to": "", "date": "", "msgid": "", "trap": "#", "view": links.archive(issue)}
        values.update(self._targets)
        if member is None:
            values["name"] = "reader"
            values["unsubscribe"] = values["prefs"] = links.subscribe()
            values["board"] = links.page("/board")
            for pos in self.vote_positions:
                values[f"vote{pos}"] = links.survey(self.survey_id or 0)
            return values
        member_id, name = member
        values["name"] = html.escape(name or "reader", quote=False)
        values["unsubscribe"] = links.unsubscribe(member_id, issue)
        values["board"] = links.board(member_id, issue)
        values["prefs"] = links.preferences(member_id, issue)
        for pos in self.vote_positions:
            values[f"vote{pos}"] = links.vote(self.survey_id or 0, member_id, pos)
        return values

    def render(self, member: tuple[int, str] | None = None) -> str:
        """The page for `member` (id, name), or for anyone when None."""
        values = self._public if member is None else self._values(member)
        out = [self._literals[0]]
        for name, literal in zip(self._names, self._literals[1:], strict=True):
            out.append(values.get(name, ""))
            out.append(literal)
        return "".join(out)
