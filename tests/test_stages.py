"""Stage callables on hand-built numpy batches (what Ray Data's `map_batches` hands them), no Ray;
then the run's CLIP model actors on the session's Ray, serving images and texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visdiff import schema
from visdiff.config import CaptionerConfig, ClipConfig
from visdiff.pipeline.actors import ClipModelActor, clip_model_actors
from visdiff.stages.caption import Captioner
from visdiff.stages.embed import ClipImageEmbedder, ClipPreprocessor, ClipTextEmbedder

N_PHOTOS = 6
BAD = {"corrupt.jpg", "truncated.jpg", "notes.txt", "missing.jpg"}


@pytest.fixture(scope="module")
def clip_cfg() -> ClipConfig:
    return ClipConfig(batch_size=4)  # smaller than the good rows: exercises chunking


@pytest.fixture(scope="module")
def batch(examples_dir: Path, tmp_path_factory) -> dict[str, np.ndarray]:
    """Real photos with bad rows interleaved: garbage JPEG, cut-off photo, text, missing file."""
    tmp = tmp_path_factory.mktemp("bad_images")
    photos = sorted((examples_dir / "set_a").glob("*.jpg"))[:N_PHOTOS]
    corrupt = tmp / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # JPEG magic, garbage body
    truncated = tmp / "truncated.jpg"
    data = photos[-1].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp / "notes.txt"
    text.write_text("these are not the pixels you are looking for\n")
    paths = [photos[0], corrupt, *photos[1:4], text, *photos[4:], truncated, tmp / "missing.jpg"]
    return {
        schema.ID: np.array([f"a/{p.name}" for p in paths], dtype=object),
        schema.SET: np.array(["a"] * len(paths), dtype=object),
        schema.URI: np.array([str(p) for p in paths], dtype=object),
    }


@pytest.fixture(scope="module")
def preprocessed(clip_cfg, batch):
    return ClipPreprocessor(clip_cfg)(batch)


@pytest.fixture(scope="module")
def image_embedder(clip_cfg):
    return ClipImageEmbedder(clip_cfg)


def _bad_mask(batch) -> np.ndarray:
    return np.array([Path(uri).name in BAD for uri in batch[schema.URI]])


def test_preprocessor_marks_bad_rows_and_keeps_order(batch, preprocessed):
    bad = _bad_mask(batch)
    n = len(batch[schema.ID])
    assert list(preprocessed[schema.ID]) == list(batch[schema.ID])
    assert list(preprocessed[schema.URI]) == list(batch[schema.URI])
    pixels = preprocessed[schema.PIXELS]
    assert pixels.shape == (n, 3, 32, 32) and pixels.dtype == np.uint8  # normalised beside CLIP
    errors = list(preprocessed[schema.ERROR])
    for i, error in enumerate(errors):
        if bad[i]:
            assert error and ": " in error, (batch[schema.URI][i], error)
            assert not pixels[i].any()
        else:
            assert error == ""
            assert pixels[i].any()
    by_name = {Path(u).name: e for u, e in zip(batch[schema.URI], errors, strict=True)}
    assert by_name["corrupt.jpg"].startswith("not_an_image")
    assert by_name["truncated.jpg"].startswith("truncated")
    assert by_name["notes.txt"].startswith("not_an_image")
    assert by_name["missing.jpg"].startswith("read_error")


def test_preprocessed_pixels_normalised_equal_open_clip_preprocess(
    batch, preprocessed, image_embedder
):
    """uint8 pixels + the batched normalisation are bit for bit open_clip's eval transform."""
    from visdiff.sources.decode import read_and_decode

    bundle = image_embedder.bundle
    good = [i for i, error in enumerate(preprocessed[schema.ERROR]) if not error]
    expected = np.stack([bundle.preprocess(read_and_decode(batch[schema.URI][i])) for i in good])
    got = image_embedder.transform.to_model_input(
        preprocessed[schema.PIXELS][good], bundle.device, bundle.dtype
    )
    np.testing.assert_array_equal(got.numpy(), expected)


def test_image_embedder_gives_the_same_vectors_for_uint8_and_float_pixels(
    preprocessed, image_embedder
):
    """float32 pixels normalised beforehand (the former stage contract) still embed the same."""
    bundle = image_embedder.bundle
    floats = image_embedder.transform.to_model_input(
        preprocessed[schema.PIXELS], bundle.device, bundle.dtype
    )
    from_uint8 = image_embedder(preprocessed)[schema.EMBEDDING]
    from_float = image_embedder({**preprocessed, schema.PIXELS: floats.numpy()})[schema.EMBEDDING]
    np.testing.assert_array_equal(from_uint8, from_float)


def test_image_embedder_gives_unit_vectors_for_good_rows_only(batch, preprocessed, image_embedder):
    out = image_embedder(preprocessed)
    bad = _bad_mask(batch)
    assert schema.PIXELS not in out
    assert list(out[schema.ID]) == list(batch[schema.ID])
    assert list(out[schema.ERROR]) == list(preprocessed[schema.ERROR])
    emb = out[schema.EMBEDDING]
    assert emb.shape == (len(bad), 64) and emb.dtype == np.float32
    norms = np.linalg.norm(emb, axis=1)
    np.testing.assert_allclose(norms[~bad], 1.0, atol=1e-5)
    assert (norms[bad] == 0).all()
    # Chunked embedding equals one direct call on the good rows.
    from visdiff.models.clip import clip_image_embeddings

    bundle = image_embedder.bundle
    good_pixels = image_embedder.transform.to_model_input(
        preprocessed[schema.PIXELS][~bad], bundle.device, bundle.dtype
    )
    direct = clip_image_embeddings(bundle, good_pixels)
    np.testing.assert_allclose(emb[~bad], direct, atol=1e-5)
    # Different photos give different vectors.
    assert not np.allclose(emb[~bad][0], emb[~bad][1])


def test_image_embedder_rows_follow_their_ids_when_reordered(preprocessed, image_embedder):
    forward = image_embedder(preprocessed)
    reversed_batch = {key: value[::-1] for key, value in preprocessed.items()}
    backward = image_embedder(reversed_batch)
    assert list(backward[schema.ID]) == list(forward[schema.ID])[::-1]
    np.testing.assert_allclose(
        backward[schema.EMBEDDING], forward[schema.EMBEDDING][::-1], atol=1e-5
    )


def test_empty_batch_passes_through(clip_cfg, image_embedder):
    empty = {key: np.array([], dtype=object) for key in (schema.ID, schema.SET, schema.URI)}
    pre = ClipPreprocessor(clip_cfg)(empty)
    assert pre[schema.PIXELS].shape == (0, 3, 32, 32)
    out = image_embedder(pre)
    assert out[schema.EMBEDDING].shape == (0, 64)


def test_text_embedder_returns_one_unit_vector_per_text(clip_cfg):
    texts = ["yoga", "meditation", "a mountain", "yoga", "people sitting still"]
    emb = ClipTextEmbedder(clip_cfg).embed(texts)
    assert emb.shape == (5, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[0], emb[3], atol=1e-6)  # same text, across chunks
    assert not np.allclose(emb[0], emb[1])


def test_model_actor_decodes_and_embeds_rows_as_the_two_stages_do(
    clip_cfg, batch, preprocessed, image_embedder
):
    """The CPU path (one process: decode + preprocess + forward) equals the split stages."""
    actor = ClipModelActor(clip_cfg)
    fused = actor.embed_rows(batch)
    split = image_embedder(preprocessed)
    assert fused.keys() == split.keys()
    for key in split:
        np.testing.assert_array_equal(fused[key], split[key], err_msg=key)
    texts = ["yoga", "a mountain"]
    np.testing.assert_array_equal(actor.embed_texts(texts), ClipTextEmbedder(clip_cfg).embed(texts))


@pytest.mark.parametrize("decode", ["actor", "pool"])
def test_run_actors_embed_images_then_texts_with_one_model_load(
    ray_session, decode, batch, preprocessed, image_embedder
):
    """One CLIP actor serves the image stage (through Ray Data) and then the hypotheses; its
    vectors are the stage callables' own. decode=pool is the GPU layout (a CPU decode pool
    sends uint8 pixels), run here on CPU."""
    clip_cfg = ClipConfig(batch_size=4, decode=decode)
    import pandas as pd

    from visdiff.pipeline.graph import embed_images, embed_texts

    rows = pd.DataFrame({key: list(values) for key, values in batch.items()})
    images = ray_session.data.from_pandas(rows).repartition(3)
    texts = ["yoga", "meditation"]
    with clip_model_actors(clip_cfg) as actors:
        embedded = embed_images(images, clip_cfg, actors=actors)
        text_vectors = embed_texts(texts, clip_cfg, actors=actors)
        startup = actors.startup_seconds()
        (handle,) = actors.handles
        served = ray_session.get(handle.served.remote())
    assert served == {"rows": len(rows), "texts": len(texts), "model_loads": 1}
    assert set(startup) == {"wall", "imports", "model_load"} and startup["wall"] > 0
    expected = image_embedder(preprocessed)
    got = {r[schema.ID]: r for r in embedded.dataset.take_all()}
    for i, image_id in enumerate(expected[schema.ID]):
        assert got[image_id][schema.ERROR] == expected[schema.ERROR][i]
        # Other torch threads and batch make-up than here: equal up to float rounding.
        np.testing.assert_allclose(
            got[image_id][schema.EMBEDDING], expected[schema.EMBEDDING][i], atol=1e-6
        )
    assert len(embedded.skipped) == len(BAD)
    np.testing.assert_allclose(text_vectors, ClipTextEmbedder(clip_cfg).embed(texts), atol=1e-6)


def test_captioner_captions_good_rows_and_reports_bad_ones(batch):
    out = Captioner(CaptionerConfig(max_new_tokens=6, batch_size=4))(batch)
    bad = _bad_mask(batch)
    assert list(out[schema.ID]) == list(batch[schema.ID])
    captions = list(out[schema.GENERATED_CAPTION])
    errors = list(out[schema.ERROR])
    for i in range(len(captions)):
        if bad[i]:
            assert captions[i] == "" and errors[i]
        else:
            assert isinstance(captions[i], str) and captions[i] and errors[i] == ""
