"""CLIP factory (open_clip): one call turns a `ClipConfig` into model + eval transform + tokenizer,
and two helpers turn texts / pixel tensors into L2-normalised float32 vectors for ranking."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from visdiff.config import ClipConfig
from visdiff.models.device import pick_device, precision_name, torch_dtype

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY_ARCH = "visdiff-tiny-clip"
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
INIT_SEED = 0  # random-init weights (tiny model) must match across actors and processes

_registered = False


@dataclass
class ClipBundle:
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> float tensor (3, H, W)
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    embed_dim: int


def register_bundled_configs() -> None:
    """Make our JSON architectures (the tiny model) known to open_clip; safe to call repeatedly."""
    global _registered
    if _registered:
        return
    if TINY_ARCH not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True


def _read_open_clip_config(arch: str) -> dict[str, Any]:
    """The `open_clip_config.json` of a `local-dir:` or `hf-hub:` arch ({} for built-in names)."""
    if arch.startswith(LOCAL_DIR_PREFIX):
        path = Path(arch[len(LOCAL_DIR_PREFIX) :]) / "open_clip_config.json"
        return json.loads(path.read_text(encoding="utf-8"))
    if arch.startswith(HF_HUB_PREFIX):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(arch[len(HF_HUB_PREFIX) :], "open_clip_config.json")
        return json.loads(Path(path).read_text(encoding="utf-8"))
    return {}


def eval_preprocess_config(cfg: ClipConfig) -> dict[str, Any]:
    """Resize/crop/normalise settings open_clip would use at inference, without loading weights.

    Mirrors open_clip's own resolution order: defaults, then the pretrained tag's mean/std, then
    the vision tower's image size.
    """
    register_bundled_configs()
    config: dict[str, Any] = {
        "mean": open_clip.OPENAI_DATASET_MEAN,
        "std": open_clip.OPENAI_DATASET_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    if cfg.arch.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)):
        full = _read_open_clip_config(cfg.arch)
        model_cfg = full.get("model_cfg", full)
        overlay = full.get("preprocess_cfg", {})
    else:
        model_cfg = open_clip.get_model_config(cfg.arch)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip architecture '{cfg.arch}'")
        overlay = open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained) if cfg.pretrained else {}
    for key in config:
        if overlay.get(key) is not None:
            config[key] = overlay[key]
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    config["image_size"] = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return config


def build_eval_transform(cfg: ClipConfig) -> Callable[[Any], torch.Tensor]:
    """The inference transform alone: what a CPU decode stage needs, without any weights."""
    pp = eval_preprocess_config(cfg)
    return open_clip.image_transform(
        pp["image_size"],
        is_train=False,
        mean=pp["mean"],
        std=pp["std"],
        resize_mode=pp["resize_mode"],
        interpolation=pp["interpolation"],
        fill_color=pp["fill_color"],
    )


def _embed_dim(model: torch.nn.Module, cfg: ClipConfig, tokenizer: Callable, device) -> int:
    if not cfg.arch.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)):
        model_cfg = open_clip.get_model_config(cfg.arch)
        if model_cfg and "embed_dim" in model_cfg:
            return int(model_cfg["embed_dim"])
    with torch.inference_mode():  # unusual configs: ask the model itself
        return int(model.encode_text(tokenizer([""]).to(device)).shape[-1])


def load_clip(cfg: ClipConfig) -> ClipBundle:
    """Build the CLIP model named by `cfg` in eval mode (random init when `pretrained` is null)."""
    register_bundled_configs()
    device = pick_device(cfg.num_gpus)
    dtype = torch_dtype(cfg.precision, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.arch,
            pretrained=cfg.pretrained,
            precision=precision_name(dtype),
            device=device,
        )
    model.eval()
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    embed_dim = _embed_dim(model, cfg, tokenizer, device)
    return ClipBundle(model, preprocess, tokenizer, device, dtype, embed_dim)


def _to_unit_float32(features: torch.Tensor) -> np.ndarray:
    return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


def clip_text_embeddings(bundle: ClipBundle, texts: list[str]) -> np.ndarray:
    """(n, D) float32, unit L2 norm; the text side of CLIP similarity."""
    if not texts:
        return np.zeros((0, bundle.embed_dim), dtype=np.float32)
    tokens = bundle.tokenizer(list(texts)).to(bundle.device)
    with torch.inference_mode():
        return _to_unit_float32(bundle.model.encode_text(tokens))


def clip_image_embeddings(bundle: ClipBundle, pixels: torch.Tensor) -> np.ndarray:
    """(n, D) float32, unit L2 norm, from preprocessed pixels (n, 3, H, W)."""
    if pixels.shape[0] == 0:
        return np.zeros((0, bundle.embed_dim), dtype=np.float32)
    with torch.inference_mode():
        images = pixels.to(device=bundle.device, dtype=bundle.dtype)
        return _to_unit_float32(bundle.model.encode_image(images))
