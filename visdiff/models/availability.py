"""Fail fast, before Ray or any weights load, when a configured model cannot be obtained.

A model is available when it is "tiny" (or "tiny-vlm"), a local folder/file, already in the
local Hugging Face cache, or (when the hub is not switched off) answered for by the hub within a
short timeout. A variant that sends images (propose.proposer=vlm, rank.ranker=vlm) also needs a
served model that takes them; that is checked here too, from the model's config.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from visdiff.config import HF_HUB_PREFIX, LOCAL_DIR_PREFIX, TINY, TINY_VLM, DescribeConfig
from visdiff.errors import ConfigError, ModelUnavailableError, first_line

HUB_TIMEOUT_S = 10.0
_TRUE = {"1", "true", "yes", "on"}
# open_clip's default weight file names on the hub (safetensors preferred, as open_clip does).
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def hub_offline() -> bool:
    """Read at call time (huggingface_hub reads it once at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _fix(key: str) -> str:
    where = "a local checkpoint file" if key == "clip.pretrained" else "a local folder"
    return f"use models=tiny to run offline, or download the weights / point {key} at {where}"


def _unavailable(
    role: str, model_id: str, key: str, preset: str, why: str
) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"{role} model '{model_id}' ({key}, preset models={preset}) is unavailable: {why}. "
        f"Fix: {_fix(key)}"
    )


def _in_hf_cache(repo_id: str, filenames: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except Exception:  # malformed repo ids are simply "not cached"
            return False
        if isinstance(found, str):
            return True
    return False


def _ask_hub(repo_id: str) -> None:
    from huggingface_hub import HfApi

    # HF_ENDPOINT is read now (not at import) so a mirror set by the caller is honoured.
    HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(repo_id, timeout=HUB_TIMEOUT_S)


def check_hub_repo(
    role: str,
    repo_id: str,
    key: str,
    preset: str,
    *,
    cached_files: tuple[str, ...] = ("config.json",),
    label: str | None = None,
) -> None:
    """A hub repo passes when one of `cached_files` is cached, or the hub answers for it."""
    if _in_hf_cache(repo_id, cached_files):
        return
    name = label or repo_id
    if hub_offline():
        raise _unavailable(role, name, key, preset, "not cached and HF_HUB_OFFLINE is set")
    try:
        _ask_hub(repo_id)
    except Exception as exc:
        raise _unavailable(
            role,
            name,
            key,
            preset,
            f"not cached, hub unreachable: {first_line(exc, typed=True)}",
        ) from None


def check_model_available(role: str, model_id: str, key: str, preset: str = "?") -> None:
    """transformers-style model ids: "tiny" / "tiny-vlm", a local folder, or a hub id."""
    if model_id in (TINY, TINY_VLM):
        return
    path = Path(model_id).expanduser()
    if path.is_dir():
        return
    if path.is_absolute() or model_id.startswith((".", "~")) or path.exists():
        raise _unavailable(role, model_id, key, preset, f"'{path}' is not an existing folder")
    check_hub_repo(role, model_id, key, preset)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith((".", "~")) or Path(value).suffix != ""


def _arch_config_on_disk(arch: str) -> bool:
    """The arch's JSON config is bundled with visdiff or ships inside open_clip: found without
    importing open_clip (and torch), which costs seconds on a small machine."""
    import importlib.util

    folders = [Path(__file__).resolve().parent / "model_configs"]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "model_configs" for p in spec.submodule_search_locations]
    return any((folder / f"{arch}.json").is_file() for folder in folders)


def check_clip_available(arch: str, pretrained: str | None, preset: str) -> None:
    """open_clip names: built-in / bundled arch + tag or checkpoint, `hf-hub:` or `local-dir:`."""
    if (not pretrained or pretrained == TINY) and _arch_config_on_disk(arch):
        return  # a known architecture with random init: nothing to fetch
    import open_clip

    from visdiff.models.clip import register_bundled_configs

    role = "CLIP"
    if arch.startswith(HF_HUB_PREFIX):
        repo = arch[len(HF_HUB_PREFIX) :]
        check_hub_repo(role, repo, "clip.arch", preset, cached_files=("open_clip_config.json",))
        return
    if arch.startswith(LOCAL_DIR_PREFIX):
        folder = Path(arch[len(LOCAL_DIR_PREFIX) :]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise _unavailable(
                role, arch, "clip.arch", preset, f"'{folder}/open_clip_config.json' does not exist"
            )
        return
    register_bundled_configs()
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ModelUnavailableError(
            f"CLIP architecture '{arch}' (clip.arch, preset models={preset}) is not an open_clip "
            f"model.{hint} See open_clip.list_models(), or use models=tiny to run offline."
        )
    if not pretrained or pretrained == TINY:
        return  # random init: nothing to fetch
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if tag_cfg:
        _check_clip_tag(arch, pretrained, tag_cfg, preset)
        return
    if _looks_like_path(pretrained):
        if not Path(pretrained).expanduser().is_file():
            raise _unavailable(
                role, pretrained, "clip.pretrained", preset, "checkpoint file does not exist"
            )
        return
    tags = open_clip.list_pretrained_tags_by_model(arch)
    raise ModelUnavailableError(
        f"CLIP weights '{pretrained}' (clip.pretrained, preset models={preset}) are neither an "
        f"open_clip tag of '{arch}' nor an existing checkpoint file. Tags of '{arch}': "
        f"{', '.join(tags) or 'none'}. Fix: {_fix('clip.pretrained')}"
    )


def _check_clip_tag(arch: str, tag: str, tag_cfg: dict, preset: str) -> None:
    model_id = f"{arch} pretrained={tag}"
    if tag_cfg.get("file"):
        if not Path(tag_cfg["file"]).is_file():
            raise _unavailable("CLIP", model_id, "clip.pretrained", preset, "file missing")
        return
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        # open_clip's convention: "org/repo/" means its default weight file, else "org/repo/file".
        if hub.endswith("/"):
            repo, files = hub.rstrip("/"), _OPEN_CLIP_WEIGHTS
        else:
            repo, filename = os.path.split(hub)
            files = (f"{os.path.splitext(filename)[0]}.safetensors", filename)
        label = f"{model_id} (hub repo {repo})"
        check_hub_repo("CLIP", repo, "clip.pretrained", preset, cached_files=files, label=label)
        return
    url = tag_cfg.get("url", "")
    cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    if url and cached.is_file():
        return
    if hub_offline():
        raise _unavailable(
            "CLIP", model_id, "clip.pretrained", preset, "not cached and HF_HUB_OFFLINE is set"
        )
    try:
        import httpx

        httpx.head(url, timeout=HUB_TIMEOUT_S, follow_redirects=True).raise_for_status()
    except Exception as exc:
        raise _unavailable(
            "CLIP",
            model_id,
            "clip.pretrained",
            preset,
            f"not cached, unreachable: {first_line(exc, typed=True)}",
        ) from None


def check_engines_installed(config: DescribeConfig) -> None:
    """vLLM is an optional extra: say so before anything starts, not from deep inside Ray."""
    import importlib.util

    wanted = []
    if config.llm.backend == "serve" and config.llm.engine == "vllm":
        wanted.append("llm.engine=vllm")
    if _judge_served(config) and config.evaluate.llm.engine == "vllm":
        wanted.append("evaluate.llm.engine=vllm")
    if config.caption.source != "manifest" and config.captioner.kind == "vllm":
        wanted.append("captioner.kind=vllm")
    if wanted and importlib.util.find_spec("vllm") is None:
        raise ModelUnavailableError(
            f"{' and '.join(wanted)} (models={config.models}) need vLLM, which is not installed: "
            "pip install -e '.[gpu]' on GPU nodes, or use models=cpu / models=tiny"
        )


def _judge_served(config: DescribeConfig) -> bool:
    return config.evaluate.evaluator == "llm_judge" and config.evaluate.llm.backend == "serve"


def check_vlm_served(config: DescribeConfig) -> None:
    """A variant that sends images needs our Serve app to host a VLM (an external endpoint is
    the user's to choose). A model whose config cannot be read passes: its load will tell."""
    from visdiff.models.vlm import is_vlm

    if config.llm.backend != "serve":
        return
    for key in ("propose.proposer", "rank.ranker"):
        section, _, name = key.partition(".")
        if getattr(getattr(config, section), name) != "vlm":
            continue
        if not is_vlm(config.llm.model, default=True):
            raise ConfigError(
                f"{key}=vlm sends images, but llm.model '{config.llm.model}' does not take "
                f"images; use a VLM (llm.model={TINY_VLM} or a LLaVA-style hub model such as "
                "llava-hf/llava-1.5-7b-hf)"
            )


def check_models_available(config: DescribeConfig) -> None:
    """Raise ModelUnavailableError for the first model of the run that cannot be obtained."""
    preset = config.models
    check_engines_installed(config)
    if config.rank.ranker == "caption":  # captions ranked with a sentence model, not CLIP
        from visdiff.models.sentence import model_source

        source = model_source(config.sentence.model)
        check_model_available("sentence", source, "sentence.model", preset)
    else:
        check_clip_available(config.clip.arch, config.clip.pretrained, preset)
    if config.caption.source != "manifest":  # manifest captions never load the captioner
        check_model_available("captioner", config.captioner.model, "captioner.model", preset)
    if config.llm.backend == "serve":
        check_model_available("LLM", config.llm.model, "llm.model", preset)
        check_vlm_served(config)
    if _judge_served(config):
        check_model_available("judge LLM", config.evaluate.llm.model, "evaluate.llm.model", preset)
