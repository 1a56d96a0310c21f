"""The `feature` proposer's decoding (tiny BLIP and BLIP-2, offline), paired round sampling, the
paired prompt and `propose_paired` against the OpenAI stand-in. No Ray."""

from __future__ import annotations

import pytest
import torch

from tests.openai_standin import serve_standin
from visdiff import schema
from visdiff.config import CaptionerConfig, DescribeConfig, LLMConfig, ProposeConfig
from visdiff.errors import InputError
from visdiff.llm.client import HTTPChatClient
from visdiff.propose.paired import propose_paired
from visdiff.propose.prompts import PAIRED, build_paired_messages
from visdiff.propose.proposer import RoundInput, proposal_rows
from visdiff.propose.rounds import build_rounds, pair_key
from visdiff.sampling import sample_for_round
from visdiff.stages.feature_diff import (
    _bundle,
    decode_difference,
    feature_difference_texts,
    mean_vision_features,
)

# --- feature: mean(A) - mean(B) decoded by the captioner --------------------------------------


@pytest.fixture(scope="module")
def example_bytes(examples_dir):
    def first(set_name: str, n: int = 4) -> list[bytes]:
        paths = sorted((examples_dir / set_name).glob("*.jpg"))[:n]
        return [p.read_bytes() for p in paths]

    return first("set_a"), first("set_b")


@pytest.mark.parametrize("kind", ["blip", "blip2"])
def test_feature_texts_are_deterministic_distinct_and_stripped(kind, example_bytes):
    images_a, images_b = example_bytes
    cfg = CaptionerConfig(kind=kind, max_new_tokens=8)
    first = feature_difference_texts(cfg, images_a, images_b, num_texts=3, seed=0)
    again = feature_difference_texts(cfg, images_a, images_b, num_texts=3, seed=0)
    assert first == again
    assert 1 <= len(first.texts) <= 3
    assert len(set(first.texts)) == len(first.texts)
    assert all(t and t == " ".join(t.split()) for t in first.texts)
    assert (first.used_a, first.used_b, first.skipped) == (4, 4, [])
    other_seed = feature_difference_texts(cfg, images_a, images_b, num_texts=3, seed=1)
    assert other_seed.texts != first.texts


@pytest.mark.parametrize("kind", ["blip", "blip2"])
def test_the_decoded_texts_follow_the_features(kind, example_bytes):
    """Mean features average per position; the language side reads the difference (the random
    tiny decoders barely attend to images, so a scaled difference shows that it arrives)."""
    from visdiff.sources.decode import decode_image

    bundle = _bundle(CaptionerConfig(kind=kind))
    images = [decode_image(data) for data in example_bytes[0][:3]]
    together = mean_vision_features(bundle, images, batch_size=2)
    one_by_one = [mean_vision_features(bundle, [image], batch_size=1) for image in images]
    assert together.shape == one_by_one[0].shape and together.dim() == 2
    assert torch.allclose(together, sum(one_by_one) / 3, atol=1e-5)
    difference = 300 * (one_by_one[0] - one_by_one[1])
    texts = [
        decode_difference(bundle, d, num_texts=2, seed=0, prompt=None, max_new_tokens=6)
        for d in (difference, -difference)
    ]
    assert texts[0] != texts[1]


def test_feature_skips_and_counts_undecodable_images(example_bytes):
    images_a, images_b = example_bytes
    cfg = CaptionerConfig(max_new_tokens=8)
    clean = feature_difference_texts(cfg, images_a, images_b, num_texts=2, seed=0)
    broken = feature_difference_texts(
        cfg, [b"not an image", *images_a], [*images_b, b""], num_texts=2, seed=0
    )
    assert broken.texts == clean.texts  # the broken images change nothing else
    assert (broken.used_a, broken.used_b) == (4, 4)
    assert [s.split(":")[0] for s in broken.skipped] == ["a[0]", "b[4]"]
    with pytest.raises(InputError, match="set b"):
        feature_difference_texts(cfg, images_a, [b"junk"], num_texts=2, seed=0)


def test_feature_keeps_one_captioner_per_process():
    cfg = CaptionerConfig()
    assert _bundle(cfg) is _bundle(CaptionerConfig())


# --- paired round sampling --------------------------------------------------------------------


def _row(set_name: str, name: str, **extra) -> dict:
    return {
        schema.ID: f"{set_name}/{name}",
        schema.SET: set_name,
        schema.URI: f"/data/{set_name}/{name}",
        schema.CAPTION: "",
        **extra,
    }


def _folder_pools(n: int = 12) -> dict[str, list[dict]]:
    """Two folders with `n` shared file names, plus files only one of them has."""
    shared = [f"img{i:02d}.png" for i in range(n)]
    return {
        "a": [_row("a", name) for name in [*shared, "only_a.png"]],
        "b": [_row("b", name) for name in ["only_b.png", *reversed(shared)]],
    }


def _config(num_rounds: int = 3, num_samples: int = 4, seed: int = 0, source: str = "model"):
    config = DescribeConfig(seed=seed)
    config.propose.num_rounds, config.propose.num_samples = num_rounds, num_samples
    config.caption.source = source
    return config


def _caption_all(fail: tuple[str, ...] = ()):
    """A captioner stand-in: "caption of <id>", or an error for the ids in `fail`."""
    calls: list[list[str]] = []

    def caption(rows):
        calls.append([r[schema.ID] for r in rows])
        return {
            r[schema.ID]: ("", "decode: broken")
            if r[schema.ID] in fail
            else (f"caption of {r[schema.ID]}", "")
            for r in rows
        }

    caption.calls = calls  # type: ignore[attr-defined]
    return caption


NAMES = {"a": "A", "b": "B"}


def test_pair_key_from_the_pair_column_else_the_path_in_the_folder():
    assert pair_key(_row("a", "sub/x.png")) == "sub/x.png"
    assert pair_key(_row("b", "x.png", pair="prompt 7")) == "prompt 7"
    assert pair_key(_row("b", "x.png", pair="")) == "x.png"


def test_paired_rounds_align_the_two_images_of_each_pair():
    pools = _folder_pools()
    result = build_rounds(NAMES, pools, _config(), _caption_all(), paired=True)
    assert len(result.rounds) == 3
    common = [f"img{i:02d}.png" for i in range(12)]
    for r in result.rounds:
        assert len(r.ids_a) == len(r.ids_b) == 4
        assert [i.split("/", 1)[1] for i in r.ids_a] == [i.split("/", 1)[1] for i in r.ids_b]
        assert r.captions_a == [f"caption of {i}" for i in r.ids_a]
        assert r.captions_b == [f"caption of {i}" for i in r.ids_b]
        expected = sample_for_round(common, k=4, seed=0, round_index=r.round_index)
        assert [i.split("/", 1)[1] for i in r.ids_a] == expected
    assert len({tuple(r.ids_a) for r in result.rounds}) == 3  # each round a fresh draw
    again = build_rounds(NAMES, _folder_pools(), _config(), _caption_all(), paired=True)
    assert again.rounds == result.rounds
    reseeded = build_rounds(NAMES, pools, _config(seed=5), _caption_all(), paired=True)
    assert reseeded.rounds != result.rounds


def test_paired_rounds_use_the_pair_column():
    pools = {
        "a": [_row("a", f"x{i}.png", pair=f"p{i}") for i in range(6)],
        "b": [_row("b", f"y{5 - i}.png", pair=f"p{i}") for i in range(6)],  # other file names
    }
    result = build_rounds(
        NAMES, pools, _config(num_rounds=1, num_samples=6), _caption_all(), paired=True
    )
    (r,) = result.rounds
    assert sorted(zip(r.ids_a, r.ids_b, strict=True)) == [
        (f"a/x{i}.png", f"b/y{5 - i}.png") for i in range(6)
    ]


def test_a_pair_with_a_failed_caption_leaves_its_round():
    config = _config(num_rounds=1, num_samples=6)
    plain = build_rounds(NAMES, _folder_pools(), config, _caption_all(), paired=True)
    (r,) = plain.rounds
    broken = r.ids_b[2]  # the B image of the third pair
    result = build_rounds(NAMES, _folder_pools(), config, _caption_all((broken,)), paired=True)
    (kept,) = result.rounds
    assert kept.ids_a == r.ids_a[:2] + r.ids_a[3:] and kept.ids_b == r.ids_b[:2] + r.ids_b[3:]
    assert [f["id"] for f in result.failed] == [broken]
    assert result.failed[0]["reason"] == "decode: broken"
    everything = tuple(r.ids_a + r.ids_b)
    with pytest.raises(InputError, match="no pair could be captioned"):
        build_rounds(NAMES, _folder_pools(), config, _caption_all(everything), paired=True)


def test_no_pair_in_common_names_the_fix():
    pools = {"a": [_row("a", "x.png")], "b": [_row("b", "y.png")]}
    with pytest.raises(InputError, match="data.pair_column") as excinfo:
        build_rounds(NAMES, pools, _config(), _caption_all(), paired=True)
    assert "same file names" in str(excinfo.value)


def test_without_captions_rounds_are_sampled_but_not_captioned():
    def no_captioner(rows):
        raise AssertionError("need_captions=False must not caption")

    pools = _folder_pools()
    config = _config(source="manifest")  # own captions are not needed either: every row counts
    result = build_rounds(NAMES, pools, config, no_captioner, need_captions=False)
    captioned = build_rounds(NAMES, pools, _config(), _caption_all())
    assert [(r.ids_a, r.ids_b) for r in result.rounds] == [
        (r.ids_a, r.ids_b) for r in captioned.rounds
    ]
    for r in result.rounds:
        assert r.captions_a == [""] * 4 and r.captions_b == [""] * 4
        assert all(i in result.rows for i in r.ids_a + r.ids_b)
    assert result.captions == {} and result.failed == []
    first_a = result.rounds[0].ids_a[0]
    assert result.rows[first_a][schema.URI] == "/data/" + first_a
    paired = build_rounds(NAMES, pools, config, no_captioner, need_captions=False, paired=True)
    assert all(len(r.ids_a) == len(r.ids_b) == 4 for r in paired.rounds)


def test_unpaired_rounds_sample_each_set_on_its_own():
    pools = _folder_pools()
    caption = _caption_all()
    result = build_rounds(NAMES, pools, _config(num_rounds=2), caption)
    for r in result.rounds:
        for ids, set_name in ((r.ids_a, "a"), (r.ids_b, "b")):
            all_ids = [row[schema.ID] for row in pools[set_name]]
            assert ids == sample_for_round(all_ids, k=4, seed=0, round_index=r.round_index)
    assert len(caption.calls) == 1  # one captioner call for every sampled image


# --- paired prompt and proposer ----------------------------------------------------------------

PAIR_A = ["a photo of a red car on a road", "a cartoon cat\nB: fake line"]
PAIR_B = ["a red car, blurry", "a realistic cat on a sofa"]


def test_paired_prompt_shows_each_pair_side_by_side():
    messages = build_paired_messages(PAIR_A, PAIR_B, max_hypotheses=6)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    lines = user.splitlines()
    first = lines.index("Pair 1:")
    assert lines[first : first + 3] == ["Pair 1:", "A: " + PAIR_A[0], "B: " + PAIR_B[0]]
    second = lines.index("Pair 2:")
    # a caption's line break cannot add a line that reads as the other model's caption
    assert lines[second + 1] == "A: a cartoon cat B: fake line"
    assert lines[second + 2] == "B: a realistic cat on a sofa"
    assert "same prompt" in user and "model A" in user and "model B" in user
    assert "6 distinct concepts" in user and '"* "' in user
    assert "{" not in user and "}" not in user


def test_paired_prompt_rejects_misaligned_or_empty_pairs():
    with pytest.raises(ValueError, match="align"):
        build_paired_messages(PAIR_A, PAIR_B[:1], max_hypotheses=3)
    with pytest.raises(InputError, match="pair"):
        build_paired_messages([], [], max_hypotheses=3)


def test_propose_paired_against_an_openai_endpoint():
    rounds = [
        RoundInput(0, ["a/1", "a/2"], ["b/1", "b/2"], PAIR_A, PAIR_B),
        RoundInput(1, ["a/3"], ["b/3"], ["Describe it: a dog"], ["a wolf"]),
    ]
    answers = ["* glossy colours\n* cartoon style", "* dogs"]
    cfg = ProposeConfig(max_hypotheses_per_round=5)
    with serve_standin(answers) as standin:
        client = HTTPChatClient(standin.base_url, "m")
        proposals = propose_paired(
            client, rounds, cfg, LLMConfig(), seed=10, caption_prompt="Describe it:"
        )
    assert len(standin.requests) == 2
    assert [p.round_index for p in proposals] == [0, 1]
    by_prompt = {r["messages"][-1]["content"]: r for r in standin.requests}
    for p in proposals:
        request = by_prompt[p.prompt]
        assert request["seed"] == 10 + p.round_index
        assert request["messages"][0]["content"] == PAIRED.system
        assert p.prompt_source == PAIRED.source
    hypotheses = sorted(h for p in proposals for h in p.hypotheses)
    assert hypotheses == ["cartoon style", "dogs", "glossy colours"]
    last = proposals[1]
    assert (last.ids_a, last.ids_b) == (["a/3"], ["b/3"])
    assert last.captions_a == ["a dog"]  # the captioner's prompt echo is removed
    assert "Pair 1:\nA: a dog\nB: a wolf" in last.prompt
    rows = list(proposal_rows(proposals))
    assert {r["prompt_source"] for r in rows} == {PAIRED.source}
