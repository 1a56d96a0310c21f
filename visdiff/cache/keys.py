"""Cache keys: a hash of the image bytes, and a stable identity of the model that processed them.

A model key covers everything that changes a model's output (architecture or model id, weights,
precision, captioning prompt and length) and nothing that does not (batch size, actor counts,
devices), so runs with different resources share entries. Local weights are identified by their
size and a hash of their first MiB rather than their mtime: a checkpoint copied to every node has
a different mtime on each, but must map to one key.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from visdiff.config import CaptionerConfig, ClipConfig

# Bump when code changes what a model produces for the same config (preprocessing, generation
# settings, normalisation): every key changes, so stale entries are never served.
KEY_SCHEME_VERSION = 1

_HEAD_BYTES = 1 << 20  # bytes of a local weights file hashed into its fingerprint
_HASH_BYTES = 16  # blake2b digest size of content hashes (32 hex chars)
_KEY_HASH_CHARS = 16  # hex chars of the config hash appended to a model key
_PART_CHARS = 40  # max length of one readable component of a model key
_BUNDLED_CONFIGS = Path(__file__).resolve().parents[1] / "models" / "model_configs"
_LOCAL_DIR_PREFIX = "local-dir:"  # open_clip's arch prefix for a local model folder


def content_hash(data: bytes) -> str:
    """Hex blake2b (16-byte digest) of an image's encoded bytes: identical files share entries."""
    return hashlib.blake2b(data, digest_size=_HASH_BYTES).hexdigest()


def _file_fingerprint(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        head = handle.read(_HEAD_BYTES)
    return {"size": path.stat().st_size, "head": hashlib.blake2b(head, digest_size=16).hexdigest()}


def _dir_fingerprint(path: Path) -> dict[str, Any]:
    """Fingerprints of every visible file below a model folder (hidden caches are skipped)."""
    files: dict[str, Any] = {}
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if file.is_file() and not any(part.startswith(".") for part in relative.parts):
            files[relative.as_posix()] = _file_fingerprint(file)
    return files


def _local_weights(value: str | None) -> dict[str, Any] | None:
    """Fingerprint of a local weights file or folder; None for hub ids, tags and random init."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return {"file": _file_fingerprint(path)}
    if path.is_dir():
        return {"dir": _dir_fingerprint(path)}
    return None


def _readable(value: str) -> str:
    """A filesystem- and URI-safe fragment of a name (never contains '/', '=' or spaces)."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._-")
    return (text or "x")[:_PART_CHARS]


def _make_key(family: str, readable: list[str], identity: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"family": family, "scheme": KEY_SCHEME_VERSION, **identity},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    digest = hashlib.blake2b(canonical.encode("utf-8"), digest_size=8).hexdigest()
    return "-".join([family, *(_readable(part) for part in readable), digest[:_KEY_HASH_CHARS]])


def clip_model_key(cfg: ClipConfig) -> str:
    """Identity of a CLIP image encoder, e.g. `clip-ViT-B-32-laion2b_s34b_b79k-fp32-<hash>`."""
    arch = cfg.arch
    identity: dict[str, Any] = {
        "arch": arch,
        "pretrained": cfg.pretrained,
        "precision": cfg.precision,
    }
    if arch.startswith(_LOCAL_DIR_PREFIX):
        folder = arch[len(_LOCAL_DIR_PREFIX) :]
        identity["arch"] = {"local": _local_weights(folder)}
        arch_name = Path(folder).name
    else:
        bundled = _BUNDLED_CONFIGS / f"{arch}.json"
        if bundled.is_file():  # our own architectures: a config edit changes the model
            identity["arch_config"] = content_hash(bundled.read_bytes())
        arch_name = arch
    pretrained_name = cfg.pretrained or "random"
    local = _local_weights(cfg.pretrained)
    if local is not None:  # the bytes identify local weights, not where they happen to lie
        identity["pretrained"] = {"local": local}
        pretrained_name = Path(str(cfg.pretrained)).name
    return _make_key("clip", [arch_name, pretrained_name, cfg.precision], identity)


def captioner_model_key(cfg: CaptionerConfig) -> str:
    """Identity of a captioner with its prompt and length, e.g. `caption-blip-tiny-fp32-<hash>`."""
    identity: dict[str, Any] = {
        "kind": cfg.kind,
        "model": cfg.model,
        "prompt": cfg.prompt,
        "max_new_tokens": cfg.max_new_tokens,
        "precision": cfg.precision,
    }
    model_name = cfg.model
    local = _local_weights(cfg.model)
    if local is not None:
        identity["model"] = {"local": local}
        model_name = Path(cfg.model).name
    return _make_key("caption", [cfg.kind, model_name, cfg.precision], identity)
