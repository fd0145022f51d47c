"""A survey's results as people see them: counted votes per option, members not clicks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OptionResult:
    position: int
    label: str
    votes: int
    percent: float


@dataclass(frozen=True, slots=True)
class Results:
    survey_id: int
    question: str
    status: str
    total: int
    options: tuple[OptionResult, ...]

    @property
    def leader(self) -> OptionResult | None:
        return max(self.options, key=lambda o: o.votes) if self.total else None

    @property
    def positions(self) -> frozenset[int]:
        return frozenset(o.position for o in self.options)

    def label(self, position: int) -> str:
        return next((o.label for o in self.options if o.position == position), "")

    def with_choice(self, old: int | None, new: int) -> Results:
        """These results as one member sees them on their own page: their new choice counted
        in place of the one counted before (others see it once the vote rule counts it)."""
        counts = {o.position: o.votes for o in self.options}
        if old is not None and old in counts:
            counts[old] -= 1
        if new in counts:
            counts[new] += 1
        return tally(
            self.survey_id,
            self.question,
            self.status,
            [(o.position, o.label) for o in self.options],
            counts,
        )


def tally(
    survey_id: int,
    question: str,
    status: str,
    options: Sequence[tuple[int, str]],
    counts: Mapping[int, int],
) -> Results:
    total = sum(max(0, counts.get(pos, 0)) for pos, _ in options)
    return Results(
        survey_id,
        question,
        status,
        total,
        tuple(
            OptionResult(
                pos,
                label,
                max(0, counts.get(pos, 0)),
                100.0 * max(0, counts.get(pos, 0)) / total if total else 0.0,
            )
            for pos, label in options
        ),
    )
