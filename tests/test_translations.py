"""Every message of the templates and the package has its Simplified Chinese translation."""

from __future__ import annotations

import datetime as dt
import re
import string
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from newsletter import config, i18n
from newsletter.errors import ConfigError
from newsletter.services.variants import settings_in, survey_in
from newsletter.site import environment

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def extracted() -> dict[str | tuple[str, ...], list[str]]:
    """The message ids `make translations` extracts (babel.cfg), with where each comes from."""
    with (REPO / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)  # type: ignore[no-untyped-call]
    found: dict[str | tuple[str, ...], list[str]] = {}
    for path, line, message, _comments, _context in extract_from_dir(
        str(REPO), method_map, options_map, keywords=DEFAULT_KEYWORDS
    ):
        found.setdefault(message, []).append(f"{path}:{line}")
    return found


@pytest.mark.parametrize("code", [c for c in i18n.languages() if c != i18n.SOURCE])
def test_every_message_has_a_translation(code: str) -> None:
    messages = extracted()
    assert len(messages) > 100  # the email chrome, members' pages, system mail
    assert "Read more" in messages
    assert ("%(count)s article", "%(count)s articles") in messages
    path = i18n.LOCALE_DIR / code / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as f:
        catalog = read_po(f, locale=code)
    assert not catalog.fuzzy, f"{path}: the header is marked fuzzy"
    problems = []
    for message_id, where in messages.items():
        lookup = message_id if isinstance(message_id, str) else message_id[0]
        entry = catalog.get(lookup)
        raw = None if entry is None else entry.string
        strings = [raw] if isinstance(raw, str) else list(raw or ())
        if entry is None or entry.fuzzy or not strings or not all(strings):
            problems.append(f"{where[0]}: {message_id!r} has no translation")
            continue
        wanted = set(PLACEHOLDER.findall(lookup))
        for s in strings:
            if set(PLACEHOLDER.findall(s)) - wanted - {"count", "num"}:
                problems.append(f"{where[0]}: {message_id!r}: {s!r} names another value")
    assert problems == [], "\n".join(problems)


def test_the_catalog_speaks_chinese_with_chinese_dates_and_one_plural_form() -> None:
    env = environment(REPO, "zh_Hans")
    template = env.from_string(
        "{{ day | format_date }} · {% trans count=n %}{{ count }} article"
        "{% pluralize %}{{ count }} articles{% endtrans %} · {{ _('Archive') }}"
    )
    assert template.render(day=dt.date(2026, 3, 5), n=3) == "2026年3月5日 · 3篇报道 · 往期"
    english = environment(REPO, "en").from_string(template_source := "{{ day | format_date }}")
    assert english.render(day=dt.date(2026, 3, 5)) == "March 5, 2026"
    assert template_source


def test_language_codes_as_people_write_them() -> None:
    for spelling in ("zh", "zh-CN", "zh_Hans", "ZH-hans", "zh_CN"):
        assert i18n.normalize(spelling) == "zh_Hans"
    assert i18n.normalize("en-GB") == "en"
    assert i18n.normalize("fr") is None
    assert i18n.html_lang("zh_Hans") == "zh-Hans"


def _config(tmp_path: Path, extra: str) -> Path:
    text = (REPO / "config.toml").read_text(encoding="utf-8") + "\n" + extra
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@hsettings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(code=st.text(alphabet=string.ascii_letters + "_-", min_size=1, max_size=12))
def test_a_translation_for_a_language_we_lack_names_its_key(tmp_path: Path, code: str) -> None:
    if code in i18n.languages():
        return
    path = _config(
        tmp_path, f'[survey.translations."{code}"]\nquestion = "?"\noptions = ["a", "b", "c"]\n'
    )
    with pytest.raises(ConfigError, match=re.escape(f"survey.translations.{code}")):
        config.load(path, env={})


@hsettings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(count=st.integers(min_value=0, max_value=6).filter(lambda n: n != 3))
def test_survey_translations_need_one_option_for_each(tmp_path: Path, count: int) -> None:
    options = ", ".join(f'"选项{i}"' for i in range(count))
    path = _config(
        tmp_path, f'[survey.translations.zh_Hans]\nquestion = "问题"\noptions = [{options}]\n'
    )
    with pytest.raises(
        ConfigError, match=r"'survey\.translations\.zh_Hans\.options': needs 3 options"
    ):
        config.load(path, env={})


def test_the_survey_and_the_list_speak_the_members_language(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        '[survey.translations.zh_Hans]\nquestion = "哪个因素最重要？"\noptions = ["甲", "乙", "丙"]\n',
    )
    settings = config.load(path, env={})
    assert settings.survey is not None
    survey = (7, settings.survey.question, list(enumerate(settings.survey.options, start=1)))
    assert survey_in(settings, survey, "zh_Hans") == (
        7,
        "哪个因素最重要？",
        [(1, "甲"), (2, "乙"), (3, "丙")],
    )
    assert survey_in(settings, survey, "en") == survey
    other = (8, "An editor's own survey?", [(1, "Yes")])
    assert survey_in(settings, other, "zh_Hans") == other  # surveys made on the desk: as written
    assert settings_in(settings, "zh_Hans").list.name == "中国知识产权 — 综合报告"
    assert settings_in(settings, "en") is settings
