"""Parsing of proposer answers: real GPT-4 outputs and adversarial formats."""

from __future__ import annotations

import json

import pytest

from visdiff.propose.parse import (
    MAX_CHARS,
    MAX_WORDS,
    dedupe_hypotheses,
    normalize_hypothesis,
    parse_hypotheses,
)

MARKUP_CHARS = set('*"“”‘’•`') | {"\n", "\r", "\t"}


@pytest.fixture(scope="module")
def recorded_outputs(recorded_outputs_path) -> list[str]:
    with open(recorded_outputs_path, encoding="utf-8") as handle:
        return [json.loads(line)["output"] for line in handle if line.strip()]


def test_recorded_gpt4_outputs_give_ten_clean_hypotheses(recorded_outputs):
    assert len(recorded_outputs) == 3
    for output in recorded_outputs:
        items = parse_hypotheses(output)
        assert len(items) == 10
        for item in items:
            assert item == item.strip() and item
            assert not (set(item) & MARKUP_CHARS), item
            assert not item.startswith(("-", "'"))
    first, second, third = (parse_hypotheses(output) for output in recorded_outputs)
    assert first[0] == "Yoga poses"
    assert first[-1] == "Handstands or advanced yoga poses"
    assert second[1] == "people doing handstands on a mountain top"
    # the recorded answer has a trailing space after the closing quote on this line
    assert second[8] == "man meditating with a red cap on a mountain top"
    assert third[0] == "Woman doing yoga"
    assert third[6] == "Yoga near bodies of water like rivers and oceans"


def test_recorded_outputs_max_items(recorded_outputs):
    assert parse_hypotheses(recorded_outputs[0], max_items=3) == [
        "Yoga poses",
        "Female individuals",
        "Activity during sunset",
    ]
    assert parse_hypotheses(recorded_outputs[0], max_items=0) == []
    assert len(parse_hypotheses(recorded_outputs[0], max_items=50)) == 10
    with pytest.raises(ValueError, match="max_items"):
        parse_hypotheses(recorded_outputs[0], max_items=-1)


@pytest.mark.parametrize(
    "line",
    [
        "* yoga poses",
        "- yoga poses",
        "• yoga poses",
        "•yoga poses",
        "+ yoga poses",
        "– yoga poses",
        "1. yoga poses",
        "12) yoga poses",
        "(3) yoga poses",
        "a. yoga poses",
        "B) yoga poses",
        "* 1. yoga poses",
        '* "yoga poses"',
        "* 'yoga poses'",
        "* “yoga poses”",
        "* ‘yoga poses’",
        "* **yoga poses**",
        '* **"yoga poses"**',
        "* yoga poses.",
        '* "yoga poses",',
        "* yoga poses;",
        "*   yoga    poses   ",
        "* Group A: yoga poses",
        "* **Group A:** yoga poses",
        "* **Group A**: yoga poses",
        "* Set B – yoga poses",
        "1.yoga poses",
        "* **yoga poses**: most images in group A show people holding poses",
        "* `yoga poses`",
        "* *yoga poses*",
        '* "yoga poses',
    ],
)
def test_single_item_formats(line):
    assert parse_hypotheses(line) == ["yoga poses"]
    assert parse_hypotheses(f"Here are the differences:\n{line}\n* sunsets") == [
        "yoga poses",
        "sunsets",
    ]


def test_mixed_bullets_crlf_preamble_and_headers():
    text = (
        "Sure! Here are the concepts that are more true of Group A:\r\n"
        "\r\n"
        "### Differences\r\n"
        "Group A:\r\n"
        "1. “People doing handstands”\r\n"
        "2) **Sunset lighting**.\r\n"
        "- 'snowy mountains'\r\n"
        "   \r\n"
        "• Group A has more silhouettes\r\n"
        "I hope this helps!\r\n"
    )
    assert parse_hypotheses(text) == [
        "People doing handstands",
        "Sunset lighting",
        "snowy mountains",
        "Group A has more silhouettes",
    ]


def test_bulleted_headers_and_nested_items():
    text = (
        "* Activities:\n"
        "    * handstands\n"
        "    * tree pose\n"
        "* Settings:\n"
        "\t- mountain tops\n"
        "* sunset lighting\n"
        "    - e.g. orange sky behind the person\n"
        "        - sometimes with clouds\n"
        "* forests\n"
    )
    # items under a header are kept; sub-points of an item are explanations and dropped
    assert parse_hypotheses(text) == [
        "handstands",
        "tree pose",
        "mountain tops",
        "sunset lighting",
        "forests",
    ]


def test_unmarked_lines_between_items_are_ignored():
    text = "* yoga poses\nThis is common in group A because of the outdoor setting.\n* sunsets"
    assert parse_hypotheses(text) == ["yoga poses", "sunsets"]


def test_fallback_without_markers():
    text = 'Here are the differences:\n\nyoga poses\n"sunset lighting".\n  handstands  \nNotes:\n'
    assert parse_hypotheses(text) == ["yoga poses", "sunset lighting", "handstands"]
    assert parse_hypotheses("**Yoga poses**\n*sunsets*") == ["Yoga poses", "sunsets"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n\r\n\t \n", "Here are the differences:\n"])
def test_empty_answers(text):
    assert parse_hypotheses(text) == []


def test_garbage_bytes_and_control_characters():
    garbage = bytes(range(256)).decode("latin-1")
    text = (
        "* yo\x00ga\x07 poses\x1b[31m\n"
        "* \x1b[1msunset\x1b[0m lighting\u200b\n"
        f"* {garbage}\n"
        "* \ufffd\ufffd\n"
        "* ---\n"
        "* \u2028snowy\u00a0mountains\n"
    )
    items = parse_hypotheses(text)
    assert items[:2] == ["yoga poses", "sunset lighting"]
    assert items[-1] == "snowy mountains"
    for item in items:
        assert item.isprintable(), repr(item)
    assert "" not in items and not any(set(item) <= set(".-*") for item in items)
    # the garbage line is one item at most: it cannot add lines
    assert len(items) <= 4


def test_garbage_only():
    assert parse_hypotheses("\x00\x01\x02\x1b[0m\ufffd") == []


def test_long_items_dropped():
    long_words = " ".join(["word"] * (MAX_WORDS + 1))
    long_chars = "x" * (MAX_CHARS + 1)
    ok_words = " ".join(["word"] * MAX_WORDS)
    text = f"* {long_words}\n* sunsets\n* {long_chars}\n* {ok_words}\n* {'y' * 100000}"
    assert parse_hypotheses(text) == ["sunsets", ok_words]


def test_duplicates_kept_in_order():
    text = "* yoga\n* Sunsets\n* yoga\n* sunsets."
    assert parse_hypotheses(text) == ["yoga", "Sunsets", "yoga", "sunsets"]


def test_numbers_inside_items_survive():
    text = "1. 2 people doing yoga\n2. 3.5 meter high cliffs\n3. 1980s clothing"
    assert parse_hypotheses(text) == [
        "2 people doing yoga",
        "3.5 meter high cliffs",
        "1980s clothing",
    ]


def test_non_str_rejected():
    with pytest.raises(TypeError):
        parse_hypotheses(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Yoga Poses", "yoga poses"),
        ('  "yoga   poses."  ', "yoga poses"),
        ("“Yoga poses”", "yoga poses"),
        ("'yoga\tposes'!", "yoga poses"),
        ("**yoga poses**", "yoga poses"),
        ("yoga (outdoors)", "yoga (outdoors)"),
        ("STRASSE", "strasse"),
        ("Straße", "strasse"),
        ("...", ""),
    ],
)
def test_normalize(text, key):
    assert normalize_hypothesis(text) == key


def test_dedupe_keeps_first_spelling_in_order():
    items = [
        "Yoga poses",
        "sunsets",
        '"yoga poses"',
        "Sunsets.",
        "handstands",
        "...",
        "YOGA  POSES",
    ]
    assert dedupe_hypotheses(items) == ["Yoga poses", "sunsets", "handstands"]
    assert dedupe_hypotheses([]) == []
    assert dedupe_hypotheses(iter(["a", "A"])) == ["a"]


def test_parse_then_dedupe_across_rounds(recorded_outputs):
    merged = [item for output in recorded_outputs for item in parse_hypotheses(output)]
    merged += parse_hypotheses('* "YOGA POSES"\n* Woman doing yoga.')
    unique = dedupe_hypotheses(merged)
    assert len(unique) == 30
    assert unique[0] == "Yoga poses"
