"""Model factories with the tiny random-init models (offline), device rules, availability checks."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visdiff.config import (
    TINY_CLIP_ARCH,
    CaptionConfig,
    CaptionerConfig,
    ClipConfig,
    DescribeConfig,
    LLMConfig,
)
from visdiff.errors import ModelUnavailableError
from visdiff.models import device as device_mod
from visdiff.models.availability import check_model_available, check_models_available
from visdiff.models.captioner import generate_captions, load_captioner
from visdiff.models.clip import (
    build_eval_transform,
    build_pixel_transform,
    clip_image_embeddings,
    clip_text_embeddings,
    load_clip,
)
from visdiff.models.device import pick_device, torch_dtype

TEXTS = ["a person doing yoga", "a person meditating", "a red car"]


def _images(n: int, size: tuple[int, int] = (80, 60)) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def clip_bundle():
    return load_clip(ClipConfig())


@pytest.fixture(scope="module")
def blip_bundle():
    return load_captioner(CaptionerConfig())


# --- device ---------------------------------------------------------------------------------


def test_pick_device_uses_cuda_only_when_asked_and_present():
    assert pick_device(0).type == "cpu"
    assert pick_device(0.5).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_torch_dtype_falls_back_to_fp32_on_cpu_and_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(device_mod, "_warned", set())
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger=device_mod.__name__):
        assert torch_dtype("fp16", cpu) == torch.float32
        assert torch_dtype("fp16", "cpu") == torch.float32
        assert torch_dtype("bf16", cpu) == torch.float32
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once for fp16, once for bf16
    assert torch_dtype("fp32", cpu) == torch.float32
    cuda = torch.device("cuda")  # constructing the device object needs no GPU
    assert torch_dtype("fp16", cuda) == torch.float16
    assert torch_dtype("bf16", cuda) == torch.bfloat16
    with pytest.raises(ValueError, match="fp64"):
        torch_dtype("fp64", cpu)


# --- CLIP -----------------------------------------------------------------------------------


def test_tiny_clip_text_embeddings_shape_and_norm(clip_bundle):
    assert clip_bundle.embed_dim == 64
    assert not clip_bundle.model.training
    emb = clip_text_embeddings(clip_bundle, TEXTS)
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[2])  # different texts, different vectors
    assert clip_text_embeddings(clip_bundle, []).shape == (0, 64)


def test_tiny_clip_image_embeddings_shape_and_norm(clip_bundle):
    pixels = torch.stack([clip_bundle.preprocess(im) for im in _images(4)])
    assert tuple(pixels.shape) == (4, 3, 32, 32)
    emb = clip_image_embeddings(clip_bundle, pixels)
    assert emb.shape == (4, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Batch composition must not change a row's vector (eval mode, no batch-dependent layers).
    np.testing.assert_allclose(clip_image_embeddings(clip_bundle, pixels[1:2]), emb[1:2], atol=1e-5)


def test_tiny_clip_is_deterministic_across_loads_and_leaves_global_rng_alone(clip_bundle):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    again = load_clip(ClipConfig())
    assert torch.equal(torch.rand(1), expected_next)  # load_clip forks the RNG
    np.testing.assert_array_equal(
        clip_text_embeddings(again, TEXTS), clip_text_embeddings(clip_bundle, TEXTS)
    )


@pytest.mark.subprocess_job
def test_tiny_clip_is_deterministic_across_processes(clip_bundle):
    code = (
        "import json; from visdiff.config import ClipConfig;"
        "from visdiff.models.clip import load_clip, clip_text_embeddings;"
        f"b = load_clip(ClipConfig()); print(json.dumps(clip_text_embeddings(b, {TEXTS!r}).tolist()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    other = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=np.float32)
    np.testing.assert_allclose(other, clip_text_embeddings(clip_bundle, TEXTS), atol=1e-6)


def test_eval_transform_without_weights_matches_open_clip_preprocess(clip_bundle):
    transform = build_eval_transform(ClipConfig())
    for image in _images(2, size=(97, 41)):
        assert torch.equal(transform(image), clip_bundle.preprocess(image))


@pytest.mark.parametrize(
    "clip_cfg",
    [ClipConfig(), ClipConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k")],
    ids=["tiny", "vit-b-32-laion"],
)
def test_pixel_transform_uint8_then_batched_normalise_equals_eval_transform(clip_cfg):
    """The split the stages use (uint8 where decoded, normalised beside the model) is bit for
    bit the eval transform, for odd sizes and aspect ratios, one image or a batch."""
    transform = build_eval_transform(clip_cfg)
    split = build_pixel_transform(clip_cfg)
    images = _images(2, size=(97, 41)) + _images(1, size=(300, 200)) + _images(1, size=(224, 224))
    uint8 = np.stack([split.to_uint8(image) for image in images])
    assert uint8.dtype == np.uint8
    got = split.to_model_input(uint8, torch.device("cpu"), torch.float32)
    expected = torch.stack([transform(image) for image in images])
    assert torch.equal(got, expected)


def test_eval_transform_uses_pretrained_tag_statistics():
    # A built-in arch with a tag: open_clip's registry gives size and mean/std, no download needed.
    transform = build_eval_transform(ClipConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    out = transform(_images(1, size=(300, 200))[0])
    assert tuple(out.shape) == (3, 224, 224)


# --- captioner ------------------------------------------------------------------------------


def test_tiny_blip_generates_deterministic_strings(blip_bundle):
    images = _images(3)
    captions = generate_captions(blip_bundle, images, prompt=None, max_new_tokens=8)
    assert len(captions) == 3
    assert all(isinstance(c, str) and c == c.strip() and c for c in captions)
    assert generate_captions(blip_bundle, images, prompt=None, max_new_tokens=8) == captions
    other = load_captioner(CaptionerConfig())  # a second actor builds the same weights
    assert generate_captions(other, images, prompt=None, max_new_tokens=8) == captions
    assert generate_captions(blip_bundle, [], prompt=None, max_new_tokens=8) == []


def test_tiny_blip_prompt_conditions_the_caption(blip_bundle):
    captions = generate_captions(blip_bundle, _images(2), prompt="a photo of", max_new_tokens=6)
    assert all(c.startswith("a photo of") for c in captions)


def test_unknown_captioner_kind_is_a_config_error():
    from visdiff.errors import ConfigError

    with pytest.raises(ConfigError, match="captioner.kind"):
        load_captioner(CaptionerConfig(kind="git"))


# --- availability ---------------------------------------------------------------------------

MISSING_HUB_ID = "visdiff-tests/no-such-model-in-cache"


def _config(**sections) -> DescribeConfig:
    return DescribeConfig(**sections)


def test_tiny_preset_is_available():
    check_models_available(_config())
    check_model_available("LLM", "tiny", "llm.model")


def test_existing_local_folder_is_available(tmp_path):
    check_models_available(_config(captioner=CaptionerConfig(model=str(tmp_path))))


def test_uncached_hub_id_offline_names_role_model_and_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(models="cpu", captioner=CaptionerConfig(model=MISSING_HUB_ID))
    with pytest.raises(ModelUnavailableError) as info:
        check_models_available(config)
    message = str(info.value)
    assert "captioner" in message and MISSING_HUB_ID in message
    assert "models=cpu" in message and "HF_HUB_OFFLINE" in message
    assert "use models=tiny to run offline" in message and "captioner.model" in message


def test_llm_checked_only_for_the_serve_backend(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    external = LLMConfig(backend="external", model=MISSING_HUB_ID, base_url="http://x/v1")
    check_models_available(_config(llm=external))
    with pytest.raises(ModelUnavailableError, match=r"LLM model .*llm\.model"):
        check_models_available(_config(llm=LLMConfig(model=MISSING_HUB_ID)))


def test_manifest_captions_do_not_need_the_captioner(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(
        captioner=CaptionerConfig(model=MISSING_HUB_ID), caption=CaptionConfig(source="manifest")
    )
    check_models_available(config)


def test_unreachable_hub_is_reported(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelUnavailableError, match="hub unreachable") as info:
        check_model_available("LLM", MISSING_HUB_ID, "llm.model", "cpu")
    assert "llm.model" in str(info.value)


def test_clip_tag_not_cached_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clip = ClipConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k")
    with pytest.raises(ModelUnavailableError) as info:
        check_models_available(_config(models="cpu", clip=clip))
    message = str(info.value)
    assert message.startswith("CLIP") and "laion2b_s34b_b79k" in message
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message and "clip.pretrained" in message


def test_missing_local_clip_checkpoint_raises(tmp_path):
    missing = tmp_path / "weights" / "clip.pt"
    with pytest.raises(ModelUnavailableError, match="checkpoint file does not exist"):
        check_models_available(
            _config(clip=ClipConfig(arch=TINY_CLIP_ARCH, pretrained=str(missing)))
        )
    missing.parent.mkdir()
    missing.write_bytes(b"not checked here, only its presence")
    check_models_available(_config(clip=ClipConfig(arch=TINY_CLIP_ARCH, pretrained=str(missing))))


def test_unknown_clip_tag_lists_the_known_tags():
    with pytest.raises(ModelUnavailableError, match="laion2b_s34b_b79k"):
        check_models_available(_config(clip=ClipConfig(arch="ViT-B-32", pretrained="laion9000")))


def test_unknown_clip_arch_suggests_similar_names():
    with pytest.raises(ModelUnavailableError, match="Similar names: .*ViT-B-32"):
        check_models_available(_config(clip=ClipConfig(arch="ViT-B-3")))


def test_missing_local_dir_arch_raises(tmp_path):
    arch = f"local-dir:{tmp_path / 'nope'}"
    with pytest.raises(ModelUnavailableError, match="open_clip_config.json"):
        check_models_available(_config(clip=ClipConfig(arch=arch)))
