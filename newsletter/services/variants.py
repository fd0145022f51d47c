"""An issue's variants at release: the choices in its audience → one compile per distinct copy.

`compile_all` is part of releasing an issue (services/issues.release_next): it reads the
distinct choices of the members the issue goes to (one row a key, not a row a member),
resolves each against the sections that have new items, and compiles each distinct copy
once: Jinja2 once and premailer once per variant. `store` keeps the variants beside the
issue and says which key gets which, for the audience snapshot's single INSERT … SELECT.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

from newsletter.config import Settings
from newsletter.content import compiler
from newsletter.content.compiler import BoardPost, Compiled, ItemView, Shape
from newsletter.content.results import Results
from newsletter.content.variants import Choice, Variant, effective, full, read_sections
from newsletter.services.unit import Unit
from newsletter.storage import variants as rows
from newsletter.storage.models import IssueVariant

SurveyTuple = tuple[int, str, Sequence[tuple[int, str]]]


@dataclass(frozen=True, slots=True)
class Plan:
    """What a release compiled: the issue's own copy, the other variants, and for each member
    key the variant it gets (None: the own copy) or that it gets nothing (`idle`)."""

    own: Compiled
    others: dict[Variant, Compiled]
    by_key: dict[str, Variant]
    idle: frozenset[str]
    full: Variant

    @property
    def compiles(self) -> int:
        return 1 + len(self.others)


def present_sections(settings: Settings, items: Sequence[ItemView]) -> list[str]:
    """The sections with new items, in the issue's order."""
    return [s.name for s in compiler.group_sections(items, settings.issue.sections)]


def survey_in(settings: Settings, survey: SurveyTuple | None, language: str) -> SurveyTuple | None:
    """config.toml's survey with its question and options in `language` where
    [survey.translations.CODE] gives them; any other survey as it was written."""
    conf = settings.survey
    if survey is None or conf is None:
        return survey
    words = conf.translations.get(language)
    survey_id, question, options = survey
    if words is None or question != conf.question:
        return survey
    labels = dict(zip(conf.options, words.options, strict=True))
    return survey_id, words.question, [(pos, labels.get(label, label)) for pos, label in options]


def settings_in(settings: Settings, language: str) -> Settings:
    """The settings a variant's message is laid out with: the list's name in its language
    (the From display name and the List-Id phrase)."""
    name = settings.list.name_in(language)
    if name == settings.list.name:
        return settings
    return dataclasses.replace(settings, list=dataclasses.replace(settings.list, name=name))


def compile_all(
    unit: Unit,
    items: Sequence[ItemView],
    survey: SurveyTuple | None,
    *,
    previous: Results | None,
    shape: Shape,
    board: Sequence[BoardPost] = (),
) -> Plan:
    """Compile the issue's own copy and each other distinct variant its audience has. The
    board's threads (read once) go into every variant, laid out in its language."""
    settings = unit.settings
    present = present_sections(settings, items)
    shows_survey = survey is not None or previous is not None
    whole = full(settings.list.language, present, shows_survey)
    by_key: dict[str, Variant] = {}
    idle: set[str] = set()
    for key, language, sections, wants_survey in rows.audience_choices(unit.session, unit.now):
        choice = Choice(language, read_sections(sections), wants_survey)
        variant = effective(
            choice, settings.list.language, present, shows_survey, settings.issue.sections
        )
        if variant is None:
            idle.add(key)
        else:
            by_key[key] = variant

    def make(variant: Variant, nonce: str | None, links: tuple[str, ...] = ()) -> Compiled:
        return compiler.compile_issue(
            settings,
            unit.services.env_for(variant.language),
            items,
            survey_in(settings, survey, variant.language) if variant.survey else None,
            previous=previous if variant.survey else None,
            now=unit.now,
            nonce=nonce,
            shape=shape,
            language=variant.language,
            sections=variant.sections,
            board=board,
            links=links,
        )

    own = make(whole, None)
    others: dict[Variant, Compiled] = {}
    links = own.links
    for variant in by_key.values():
        if variant != whole and variant not in others:
            # One nonce for the issue: slots and Message-IDs read alike in every variant; one
            # link list, numbered on from the own copy's, so /r/ links mean one URL each.
            others[variant] = make(variant, own.nonce, links)
            links = others[variant].links
    # The own copy claims every item (it shows them all) and keeps the issue's link list.
    own = dataclasses.replace(own, item_ids=tuple(i.id for i in items), links=links)
    return Plan(own, others, by_key, frozenset(idle), whole)


def store(unit: Unit, issue_id: int, plan: Plan) -> dict[str, int]:
    """Keep the variants other than the own copy; the variant id each member key gets."""
    ids: dict[Variant, int] = {}
    for variant, compiled in plan.others.items():
        row = rows.add(
            unit.session,
            IssueVariant(
                issue_id=issue_id,
                key=variant.key,
                language=variant.language,
                sections=json.dumps(list(variant.sections), ensure_ascii=False),
                survey=variant.survey,
                subject=compiled.subject,
                html=compiled.html,
                text=compiled.text,
            ),
        )
        ids[variant] = row.id
    return {key: ids[v] for key, v in plan.by_key.items() if v in ids}
