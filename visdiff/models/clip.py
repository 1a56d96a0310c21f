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

from visdiff.config import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, TINY_CLIP_ARCH, ClipConfig
from visdiff.models.device import pick_device, precision_name, torch_dtype

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
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
    if TINY_CLIP_ARCH not in open_clip.list_models():
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


@dataclass(frozen=True)
class PixelTransform:
    """open_clip's eval transform split where it turns the image into floats.

    `geometry` (resize, crop, RGB) runs where the image is decoded and yields uint8 pixels, a
    quarter of the float32 bytes to move; `normalize` (/255, mean/std) runs on a whole batch
    beside the model, on its device. Together they compute exactly what the eval transform does.
    """

    geometry: Callable[[Any], Any]  # PIL image -> PIL image (resized, cropped, RGB)
    normalize: torch.nn.Module  # float (n, 3, H, W) in [0, 1] -> normalised

    def to_uint8(self, image: Any) -> np.ndarray:
        """(3, H, W) uint8: the geometry applied, before ToTensor's scaling."""
        pixels = np.asarray(self.geometry(image), dtype=np.uint8)
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"expected an RGB image, got pixels of shape {pixels.shape}")
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def to_model_input(
        self, pixels: np.ndarray, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """uint8 (n, 3, H, W) -> the model's input: ToTensor's /255 and Normalize, batched."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
        return self.normalize(batch.to(torch.float32).div(255)).to(dtype)


def build_pixel_transform(cfg: ClipConfig) -> PixelTransform:
    """`build_eval_transform` cut at its ToTensor step (see `PixelTransform`)."""
    from torchvision.transforms import Compose, Normalize, ToTensor

    steps = list(build_eval_transform(cfg).transforms)
    cut = next((i for i, step in enumerate(steps) if isinstance(step, ToTensor)), None)
    rest = steps[cut + 1 :] if cut is not None else []
    if cut is None or len(rest) != 1 or not isinstance(rest[0], Normalize):
        raise ValueError(f"unexpected open_clip eval transform for '{cfg.arch}': {steps}")
    return PixelTransform(geometry=Compose(steps[:cut]), normalize=rest[0])


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
