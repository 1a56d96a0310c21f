"""Parsing of proposer answers: real GPT-4 outputs and adversarial formats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visdiff.config import LLMConfig, ProposeConfig
from visdiff.llm.client import ChatReply
from visdiff.propose.parse import (
    MAX_CHARS,
    MAX_WORDS,
    Candidate,
    dedupe_hypotheses,
    drop_cut_off_line,
    merge_near_duplicates,
    normalize_hypothesis,
    parse_hypotheses,
)
from visdiff.propose.pool import HypothesisPool
from visdiff.propose.proposer import (
    Proposal,
    RoundInput,
    hypotheses_from_answer,
    proposal_rows,
    propose,
)

MARKUP_CHARS = set('*"“”‘’•`') | {"\n", "\r", "\t"}


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


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("* yoga poses\n* sunsets\n* snowy mou", "* yoga poses\n* sunsets"),
        ("* yoga poses\r\n* sunsets\r\n* snowy mou", "* yoga poses\n* sunsets"),
        ("* yoga poses\n* sunsets\n", "* yoga poses\n* sunsets\n"),  # cut at a line end
        ("* yoga poses\n* sunsets\n  ", "* yoga poses\n* sunsets\n  "),
        ("* yoga po", ""),
        ("", ""),
    ],
)
def test_drop_cut_off_line(text, kept):
    assert drop_cut_off_line(text) == kept


def test_answer_cut_at_the_token_limit_is_flagged_and_loses_its_last_line():
    text = '* "Yoga poses"\n* "Sunset lighting"\n* "People doing hand'
    assert hypotheses_from_answer(text, "length", max_items=10) == (
        ["Yoga poses", "Sunset lighting"],
        True,
    )
    for reason in ("stop", None):
        items, truncated = hypotheses_from_answer(text, reason, max_items=10)
        assert items[-1] == "People doing hand" and not truncated


def test_recorded_gpt4_outputs_through_the_proposer_path(recorded_outputs):
    for output in recorded_outputs:
        items, truncated = hypotheses_from_answer(output, "stop", max_items=10)
        assert items == parse_hypotheses(output) and len(items) == 10 and not truncated
        # the same answer cut inside its last item: nine clean items, flagged
        cut = output[: output.rindex("\n") + 6]
        items, truncated = hypotheses_from_answer(cut, "length", max_items=10)
        assert items == parse_hypotheses(output)[:9] and truncated


def _unit(*angles_deg: float) -> np.ndarray:
    radians = np.deg2rad(angles_deg)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_merge_near_duplicates_keeps_first_spelling_and_provenance():
    candidates = [
        Candidate("Yoga poses", 0, 0),
        Candidate("sunsets", 0, 1),
        Candidate("yoga postures", 1, 0),  # 5 degrees from "Yoga poses": cos 0.996
        Candidate("Sunsets.", 1, 1),  # same text: merged whatever its embedding says
        Candidate("snowy mountains", 2, 0),  # 40 degrees from everything kept: cos 0.77
        Candidate("...", 2, 1),  # empty key: dropped
    ]
    embeddings = _unit(0, 90, 5, 170, 130, 0) * np.array([[2.0], [1], [3], [1], [1], [1]])
    merged = merge_near_duplicates(candidates, embeddings, threshold=0.9)
    assert [m.text for m in merged] == ["Yoga poses", "sunsets", "snowy mountains"]
    assert merged[0].sources == [candidates[0], candidates[2]]
    assert merged[0].rounds == [0, 1]
    assert merged[1].sources == [candidates[1], candidates[3]]
    assert merged[2].sources == [candidates[4]]
    # a stricter threshold keeps the paraphrase apart; exact spellings still merge
    strict = merge_near_duplicates(candidates, embeddings, threshold=0.999)
    assert [m.text for m in strict] == ["Yoga poses", "sunsets", "yoga postures", "snowy mountains"]


def test_merge_compares_with_each_groups_first_spelling_only():
    # a chain of 30-degree steps: each neighbour is similar (cos 0.87), the ends are not
    candidates = [Candidate(f"h{i}", 0, i) for i in range(4)]
    merged = merge_near_duplicates(candidates, _unit(0, 30, 60, 90), threshold=0.85)
    assert [[c.text for c in m.sources] for m in merged] == [["h0", "h1"], ["h2", "h3"]]
    # a candidate close enough to two kept hypotheses (cos 0.84 and 0.89) joins the closer one
    candidates.append(Candidate("between", 1, 0))
    merged = merge_near_duplicates(candidates, _unit(0, 30, 60, 90, 33), threshold=0.83)
    assert [c.text for c in merged[1].sources] == ["h2", "h3", "between"]


def test_merge_input_checks():
    one = [Candidate("a", 0, 0)]
    assert merge_near_duplicates([], np.zeros((0, 4)), threshold=0.9) == []
    with pytest.raises(ValueError, match="one row per candidate"):
        merge_near_duplicates(one, np.ones((2, 3)), threshold=0.9)
    with pytest.raises(ValueError, match="one row per candidate"):
        merge_near_duplicates(one, np.ones(3), threshold=0.9)
    with pytest.raises(ValueError, match="non-zero"):
        merge_near_duplicates(one, np.zeros((1, 3)), threshold=0.9)
    with pytest.raises(ValueError, match="finite"):
        merge_near_duplicates(one, np.full((1, 3), np.nan), threshold=0.9)
    with pytest.raises(ValueError, match="threshold"):
        merge_near_duplicates(one, np.ones((1, 3)), threshold=1.5)


class _RecordedLLM:
    """Stands in for a chat endpoint: answers round r with the r-th recorded answer."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.requests: list[list[dict[str, str]]] = []

    def reply(self, messages, *, temperature, max_tokens, seed=None):
        self.requests.append(messages)
        return ChatReply(self.answers[seed % len(self.answers)], "stop")


def test_propose_keeps_provenance_per_round(recorded_outputs, tmp_path):
    rounds = [
        RoundInput(r, [f"a{r}"], [f"b{r}"], [f"Describe it. caption a{r}"], [f"caption b{r}"])
        for r in range(3)
    ]
    llm = _RecordedLLM(recorded_outputs)
    proposals, merged = propose(
        llm, rounds, ProposeConfig(), LLMConfig(), seed=0, caption_prompt="Describe it."
    )
    assert [p.round_index for p in proposals] == [0, 1, 2]
    assert merged == dedupe_hypotheses(h for p in proposals for h in p.hypotheses)
    assert proposals[1].hypotheses == parse_hypotheses(recorded_outputs[1])
    assert proposals[1].prompt_source == "built-in 'clip_friendly'"
    assert "1. caption a1" in proposals[1].prompt.splitlines()
    assert "Describe it" not in proposals[1].prompt
    # the captions as the LLM saw them, aligned with the ids, echo removed
    assert proposals[1].ids_a == ["a1"] and proposals[1].captions_a == ["caption a1"]
    assert proposals[1].captions_b == ["caption b1"] and proposals[1].refined_from == []
    assert not any(p.truncated for p in proposals)
    assert proposals[2].candidates()[3] == Candidate(proposals[2].hypotheses[3], 2, 3)

    own = tmp_path / "mine.txt"
    own.write_text("{text}\nList {num_hypotheses}.", encoding="utf-8")
    proposals, _ = propose(
        llm, rounds[:1], ProposeConfig(prompt_file=str(own)), LLMConfig(), seed=0
    )
    assert proposals[0].prompt == "Group A: Describe it. caption a0\nGroup B: caption b0\nList 10."
    assert proposals[0].prompt_source == f"file {own}"
    assert llm.requests[-1] == [{"role": "user", "content": proposals[0].prompt}]


def test_proposal_rows():
    proposals = [
        Proposal(
            0, "* a\n* b", ["a", "b"], ["x"], ["y"], truncated=True, prompt_source="s", prompt="p"
        ),
        Proposal(1, "nothing", [], ["z"], ["w"]),
    ]
    proposals[0].captions_a, proposals[0].captions_b = ["cx"], ["cy"]
    rows = list(proposal_rows(proposals, {(0, 1): "a"}))
    assert [(r["round"], r["index"], r["hypothesis"], r["merged_into"]) for r in rows] == [
        (0, 0, "a", None),
        (0, 1, "b", "a"),
        (1, None, None, None),
    ]
    assert rows[0]["truncated"] is True and rows[2]["truncated"] is False
    assert rows[1]["ids_a"] == ["x"] and rows[1]["ids_b"] == ["y"] and rows[1]["prompt"] == "p"
    assert rows[1]["captions_a"] == ["cx"] and rows[1]["captions_b"] == ["cy"]
    assert rows[2]["raw_text"] == "nothing" and rows[2]["captions_a"] == []
    assert all(r["refined_from"] == [] for r in rows)
    json.dumps(rows)


def _angle_embedder(angles: dict[str, float], calls: list[list[str]]):
    """Texts -> 2-D unit vectors at the given angles (degrees); records each call."""

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return _unit(*[angles[t] for t in texts])

    return embed


def test_pool_merges_near_duplicates_and_marks_rows():
    angles = {"Yoga poses": 0, "sunsets": 90, "yoga postures": 4, "snow": 45, "sunsets!": 170}
    calls: list[list[str]] = []
    embed = _angle_embedder(angles, calls)
    first = [
        Proposal(0, "r0", ["Yoga poses", "sunsets"], ["a1"], ["b1"]),
        Proposal(1, "r1", ["yoga postures", "snow"], ["a2"], ["b2"]),
    ]
    pool = HypothesisPool.build(first, embed, threshold=0.99)  # cos 4 degrees = 0.9976
    assert pool.hypotheses == ["Yoga poses", "sunsets", "snow"]
    np.testing.assert_allclose(pool.embeddings, _unit(0, 90, 45))
    assert pool.merged_into() == {(1, 0): "Yoga poses"}
    assert pool.shown_ids() == {"a1", "b1", "a2", "b2"}
    rows = list(pool.rows())
    assert [(r["hypothesis"], r["merged_into"]) for r in rows] == [
        ("Yoga poses", None),
        ("sunsets", None),
        ("yoga postures", "Yoga poses"),
        ("snow", None),
    ]

    # extending embeds only the new answer; an exact re-spelling merges whatever its vector
    refined = Proposal(2, "r2", ["sunsets!", "yoga postures"], ["a9"], refined_from=["snow"])
    grown = pool.extend([refined], embed)
    assert calls == [
        ["Yoga poses", "sunsets", "yoga postures", "snow"],
        ["sunsets!", "yoga postures"],
    ]
    assert grown.hypotheses == pool.hypotheses
    assert grown.merged_into()[(2, 0)] == "sunsets" and grown.merged_into()[(2, 1)] == "Yoga poses"
    assert [r["refined_from"] for r in grown.rows()][-1] == ["snow"]
    # a threshold of 1 merges exact spellings only
    assert HypothesisPool.build(first, embed, threshold=1.0).hypotheses == [
        "Yoga poses",
        "sunsets",
        "yoga postures",
        "snow",
    ]


def test_pool_of_empty_answers_has_no_hypothesis_and_never_embeds():
    calls: list[list[str]] = []
    pool = HypothesisPool.build(
        [Proposal(0, "no list", [])], _angle_embedder({}, calls), threshold=0.9
    )
    assert pool.hypotheses == [] and calls == []
    assert [r["hypothesis"] for r in pool.rows()] == [None]
