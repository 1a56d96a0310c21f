"""Held-out testing (rank.holdout): the images shown to the proposer are left out of the
significance figures. A simulation shows why (selection bias), unit tests show how: the held-out
partials are exactly the partials of the held-out rows, the ranking statistics still use every
image, and too few held-out images fall back to every image, said so."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from visdiff.rank.aggregate import ScoreAggregate
from visdiff.rank.holdout import SplitPartials
from visdiff.rank.partials import HypothesisStats, ScorePartials
from visdiff.rank.significance import ranked_rows
from visdiff.rank.stats import auroc_many

ALPHA, CI_LEVEL, THRESHOLD = 0.05, 0.95, 0.3


def _simulate_selection(runs: int, *, seed: int) -> tuple[float, float]:
    """Share of runs flagging any row, tested on every image / on the held-out ones.

    Null: A and B identical, 100 + 100 images, CLIP-like scores of 1000 unrelated candidate
    hypotheses. The "proposer" sees 60 images per set (3 rounds of 20, as in the paper) and
    keeps the 10 candidates that best separate those: it picks noise that happens to fit them.
    """
    n, shown_per_set, candidates, kept = 100, 60, 1000, 10
    rng = np.random.default_rng(seed)
    is_a = np.arange(2 * n) < n
    shown = (np.arange(2 * n) % n) < shown_per_set
    names = [f"h{j}" for j in range(kept)]
    flagged = np.zeros((runs, 2), dtype=bool)
    for run in range(runs):
        scores = rng.normal(0.2, 0.03, (2 * n, candidates)).astype(np.float32)
        fit = auroc_many(scores[shown & is_a], scores[shown & ~is_a])
        picked = np.ascontiguousarray(scores[:, np.argsort(-fit)[:kept]])
        scored = SplitPartials.from_scores(picked, is_a, ~shown, threshold=THRESHOLD).finalize(
            names
        )
        for col, tested in enumerate((None, scored.tested)):
            rows = ranked_rows(scored.stats, tested=tested, alpha=ALPHA, ci_level=CI_LEVEL)
            flagged[run, col] = any(r["significant"] for r in rows)
    return float(flagged[:, 0].mean()), float(flagged[:, 1].mean())


def test_selection_bias_is_gone_when_testing_on_held_out_images() -> None:
    """1000 null runs (seed 3): tested on every image, most runs flag a hypothesis the proposer
    fitted to noise (measured: 81.3%); tested on the 40 + 40 images it never saw, at most 5%
    within two Monte Carlo standard errors (sqrt(0.05 * 0.95 / 1000) = 0.7%; measured: 5.3%,
    and 5.1% with seed 4). Under this null BH over the 2 x 10 rows is BH at 5% over 10
    independent two-sided tests, so its true rate is at most 5%."""
    runs = 1000
    on_all, held_out = _simulate_selection(runs, seed=3)
    assert on_all >= 0.6, on_all
    assert held_out <= ALPHA + 2 * np.sqrt(ALPHA * (1 - ALPHA) / runs), held_out


def _scores(seed: int = 0, n: int = 90, h: int = 4) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.2, 0.1, (n, h)).astype(np.float32)
    is_a = rng.random(n) < 0.5
    scores[is_a, 0] += 0.05
    return scores, is_a, [f"{'a' if a else 'b'}/{i}.jpg" for i, a in enumerate(is_a)]


def _block(scores: np.ndarray, is_a: np.ndarray, ids: list[str], errors: list[str]) -> pa.Table:
    """An embedded-images block; with unit text embeddings the scores are the embeddings."""
    return pa.table(
        {
            "id": ids,
            "set": np.where(is_a, "a", "b"),
            "error": errors,
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(scores.ravel()), scores.shape[1]
            ),
        }
    )


def _fields(part: ScorePartials) -> dict:
    out = {k: getattr(part, k) for k in ("count", "mean", "m2", "above")}
    out["exact"] = part.exact
    out["hist"] = part.hist
    return out


@pytest.mark.parametrize("exact_cap", [10_000, 20])
def test_held_out_partials_equal_partials_of_the_held_out_rows(exact_cap: int) -> None:
    """Blocks through ScoreAggregate (failed rows among them), combined: the held-out partial
    equals ScorePartials of the held-out rows computed directly, and the other one every row."""
    scores, is_a, ids = _scores()
    errors = [""] * len(ids)
    errors[5] = "decode: broken"  # a failed row is in neither partial
    held_in = set(ids[::3]) | {"a/not-ranked.jpg"}  # shown ids may include unranked images
    options = {"threshold": THRESHOLD, "num_bins": 64, "exact_cap": exact_cap}
    agg = ScoreAggregate(
        [f"h{j}" for j in range(scores.shape[1])],
        np.eye(scores.shape[1], dtype=np.float32),
        expected_total=len(ids) - 1,
        held_in=held_in,
        **options,
    )
    cuts = [0, 17, 18, 60, len(ids)]
    acc = agg.init(None)
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        part = agg.aggregate_block(_block(scores[lo:hi], is_a[lo:hi], ids[lo:hi], errors[lo:hi]))
        acc = agg.combine(acc, part)
    ok = np.array([e == "" for e in errors])
    tested = ok & np.array([i not in held_in for i in ids])
    direct = ScorePartials.from_scores(scores[tested], is_a[tested], **options)
    every = ScorePartials.from_scores(scores[ok], is_a[ok], **options)
    for got, want in ((acc.held_out, direct), (acc.every, every)):
        for name, value in _fields(want).items():
            mine = _fields(got)[name]
            if name == "exact" and value is not None:
                for m, v in zip(mine, value, strict=True):
                    np.testing.assert_array_equal(m, v)
            elif value is None:
                assert mine is None, name
            else:
                np.testing.assert_allclose(mine, value, rtol=1e-12, atol=1e-15, err_msg=name)
    names = [f"h{j}" for j in range(scores.shape[1])]
    scored = agg.finalize(acc)
    for got_stats, want_stats in ((scored.tested, direct), (scored.stats, every)):
        for got_one, want_one in zip(got_stats, want_stats.finalize(names), strict=True):
            got_d, want_d = got_one.to_dict(), want_one.to_dict()
            assert got_d.pop("hypothesis") == want_d.pop("hypothesis")
            assert got_d == pytest.approx(want_d, rel=1e-9, abs=1e-12)
    assert scored.holdout["left_out_of_tests"] == {
        "a": int(np.sum(ok & is_a & ~tested)),
        "b": int(np.sum(ok & ~is_a & ~tested)),
    }
    assert scored.holdout["fallback"] is None


def test_rows_rank_on_every_image_and_test_on_the_held_out_ones() -> None:
    scores, is_a, _ = _scores(seed=1, n=200)
    tested = np.arange(200) % 4 != 0
    scored = SplitPartials.from_scores(scores, is_a, tested, threshold=THRESHOLD).finalize(
        ["h0", "h1", "h2", "h3"]
    )
    rows = ranked_rows(scored.stats, tested=scored.tested, alpha=ALPHA, ci_level=CI_LEVEL)
    every = {s.hypothesis: s for s in scored.stats}
    held = {s.hypothesis: s for s in scored.tested}
    for r in rows:
        s, t = every[r["hypothesis"]], held[r["hypothesis"]]
        a_side = r["direction"] == "a"
        assert r["auroc"] == (s.auroc if a_side else 1 - s.auroc)  # ranking: every image
        assert r["p_value"] == (t.p_greater if a_side else t.p_less)  # test: held-out only
        assert (r["n_a"], r["n_b"]) == (s.n_a, s.n_b)
        assert (r["n_a_test"], r["n_b_test"]) == (t.n_a, t.n_b)
        assert r["n_a_test"] + r["n_b_test"] == int(tested.sum())
    assert s.auroc != t.auroc  # the two really differ
    with pytest.raises(ValueError, match="same hypotheses"):
        ranked_rows(scored.stats, tested=scored.tested[:2], alpha=ALPHA, ci_level=CI_LEVEL)


def test_too_few_held_out_images_fall_back_to_every_image() -> None:
    scores, is_a, _ = _scores(seed=2, n=40)
    tested = ~is_a  # every image of A was shown: none of A is held out
    scored = SplitPartials.from_scores(scores, is_a, tested, threshold=THRESHOLD).finalize(
        ["h0", "h1", "h2", "h3"]
    )
    assert scored.tested == scored.stats
    assert "set A has 0 image(s)" in scored.holdout["fallback"]
    assert scored.holdout["tested"] == scored.holdout["scored"]
    assert scored.holdout["left_out_of_tests"] == {"a": 0, "b": 0}


def test_holdout_off_tests_every_image() -> None:
    scores, is_a, _ = _scores(seed=3)
    scored = SplitPartials.from_scores(scores, is_a, None, threshold=THRESHOLD).finalize(
        ["h0", "h1", "h2", "h3"]
    )
    assert scored.tested is scored.stats and not scored.holdout["enabled"]
    with pytest.raises(ValueError, match="hold-out on and off"):
        SplitPartials.from_scores(scores, is_a, None, threshold=THRESHOLD).merge(
            SplitPartials.from_scores(scores, is_a, ~is_a, threshold=THRESHOLD)
        )


def _assert_same_stats(got: HypothesisStats, want: HypothesisStats) -> None:
    """Equal up to float round-off (merge order moves the moments' last bits)."""
    for key, value in want.to_dict().items():
        if isinstance(value, float):
            assert getattr(got, key) == pytest.approx(value, rel=1e-12, abs=1e-15), key
        else:
            assert getattr(got, key) == value, key


def test_split_merge_all_equals_pairwise_merges() -> None:
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(0.2, 0.2, (90, 3)), 2)
    is_a, tested = rng.random(90) < 0.5, rng.random(90) < 0.7
    parts = [
        SplitPartials.from_scores(
            scores[i : i + 30], is_a[i : i + 30], tested[i : i + 30], threshold=THRESHOLD
        )
        for i in range(0, 90, 30)
    ]
    names = ["x", "y", "z"]
    once = SplitPartials.merge_all(parts).finalize(names)
    pairwise = parts[0].merge(parts[1]).merge(parts[2]).finalize(names)
    for got, want in ((once.stats, pairwise.stats), (once.tested, pairwise.tested)):
        for g, w in zip(got, want, strict=True):
            _assert_same_stats(g, w)
    assert once.holdout == pairwise.holdout
    with pytest.raises(ValueError, match="hold-out on and off"):
        SplitPartials.merge_all([parts[0], SplitPartials(parts[1].every, None)])


def test_fold_blocks_equals_one_block_folded_on_the_driver(ray_session) -> None:
    """`fold_blocks` (a task per run of blocks and one fold task, or a task per slice of the
    hypotheses over every row) gives what one partial of all rows gives, for exact and histogram partials, with hold-out on and a failed row; a second
    aggregation without `combine_all` rides along. Scores are exact in float32 (multiples of
    1/64), so block boundaries cannot move them."""
    import ray
    from ray.data.aggregate import Count

    from visdiff.rank.aggregate import fold_blocks

    rng = np.random.default_rng(6)
    n, h = 240, 5
    vectors = rng.integers(-4, 5, (n, 4)).astype(np.float32) / 8
    text = rng.integers(-4, 5, (h, 4)).astype(np.float32) / 8
    sets = ["a" if i % 3 else "b" for i in range(n)]
    items = [
        {
            "id": f"{s}/{i}",
            "set": s,
            "uri": f"mem://{i}",
            "error": "" if i % 17 else "bad",
            "embedding": vectors[i],
            "from_cache": False,
        }
        for i, s in enumerate(sets)
    ]
    dataset = ray.data.from_items(items, override_num_blocks=12).materialize()
    whole = pa.concat_tables(ray.get(dataset.to_arrow_refs()))
    held_in = [f"{s}/{i}" for i, s in enumerate(sets) if i % 4 == 0]
    names = [f"h{j}" for j in range(h)]

    class BinnedScores(ScoreAggregate):  # local: pickled by value for the workers
        NAME = "binned_score_partials"  # a second ScoreAggregate in the same pass

    exact, binned = (
        kind(names, text, threshold=0.1, num_bins=64, exact_cap=cap, held_in=held_in)
        for kind, cap in ((ScoreAggregate, 10_000), (BinnedScores, 100))
    )
    # By blocks (2 tasks, 1 pass); then with the exact one by hypothesis slices (a task per
    # core, each over every row: what 10^5 images per set get), the others by blocks.
    for scores_per_slice in (n * h + 1, 1):
        aggregations = [exact, binned, Count()]
        got = fold_blocks(
            dataset, aggregations, rows_per_task=120, scores_per_slice=scores_per_slice
        )
        assert got["count"] == n
        for scoring in (exact, binned):
            want = scoring.finalize(scoring.aggregate_block(whole))
            scored = got[scoring.get_agg_name()]
            assert scored.holdout == want.holdout
            assert scored.stats[0].auroc_exact is (scoring is exact)
            for mine, theirs in ((scored.stats, want.stats), (scored.tested, want.tested)):
                for g, w in zip(mine, theirs, strict=True):
                    _assert_same_stats(g, w)
