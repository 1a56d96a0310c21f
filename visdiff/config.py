"""Typed run configuration: dataclass defaults <- configs/base.yaml <- model preset <- experiment
file <- `key=value` overrides. Validation happens here, before any model or Ray starts."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from visdiff.errors import ConfigError

PRESETS = ("tiny", "cpu", "gpu")


@dataclass
class DataConfig:
    manifest: str | None = None  # CSV / Parquet / JSONL with columns path, group_name[, caption]
    group_a: str | None = None  # group_name of set A in the manifest
    group_b: str | None = None  # group_name of set B in the manifest
    # set_a / set_b: a folder or prefix (local or s3://), or shards: a WebDataset .tar / Parquet
    # file, a glob, a brace pattern ("s3://b/laion/{00000..00999}.tar") or a list of these.
    set_a: Any = None
    set_b: Any = None
    image_column: str = "auto"  # Parquet shards: column with the encoded image bytes
    caption_column: str = "auto"  # Parquet shards: alt-text column ("auto" tries common names)
    max_num_samples: int = 5000  # per-set cap on images ranked (seeded); 0 = every image
    num_blocks: int = 0  # Ray Data blocks per set (folders/manifests); 0 lets the program choose


@dataclass
class ClipConfig:
    arch: str = "visdiff-tiny-clip"  # open_clip model name (or the bundled tiny config)
    pretrained: str | None = None  # open_clip tag, hf-hub:..., local checkpoint; null = random init
    precision: str = "fp32"  # fp32 | fp16 | bf16 (fp16/bf16 only on GPU)
    batch_size: int = 32
    num_actors: int = 1  # actor-pool size of the embedding stage
    num_decoders: int = 1  # actor-pool size of the decode + preprocess stage (CPU)
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class CaptionerConfig:
    kind: str = "blip"  # blip | blip2 (transformers) | vllm (VLM on GPUs via ray.data.llm)
    model: str = "tiny"  # hub id, local folder, or "tiny" (random init, offline)
    prompt: str | None = None  # optional text prefix for conditional captioning
    max_new_tokens: int = 30
    precision: str = "fp32"
    batch_size: int = 8
    num_actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class LLMConfig:
    backend: str = "serve"  # serve: start our Serve app | external: any OpenAI-compatible URL
    engine: str = "transformers"  # for backend=serve: transformers | vllm
    model: str = "tiny"  # hub id, local folder, or "tiny" (random init, offline)
    served_model_name: str = "visdiff-llm"  # model name the Serve app answers to
    base_url: str | None = None  # external: e.g. https://api.openai.com/v1
    external_model: str | None = None  # external: model name sent in requests
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var holding the key (never the key)
    temperature: float = 0.7
    max_tokens: int = 256
    timeout_s: float = 300.0
    http_host: str = "127.0.0.1"  # where Serve's HTTP proxy listens (backend=serve)
    http_port: int = 8000
    route_prefix: str = "/visdiff-llm"
    app_name: str = "visdiff-llm"
    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    keep_running: bool = False  # leave the Serve app up after the run (reused by later runs)


@dataclass
class CaptionConfig:
    # model: run the captioner | manifest: the input's own captions (manifest caption column,
    # shard alt-text) | auto: the input's caption where present, else the captioner
    source: str = "model"


@dataclass
class ProposeConfig:
    proposer: str = "llm"  # registry name
    prompt: str = "clip_friendly"  # prompt template name
    num_rounds: int = 3
    num_samples: int = 20  # images per set per round
    max_hypotheses_per_round: int = 10


@dataclass
class RankConfig:
    ranker: str = "clip"  # registry name
    classify_threshold: float = 0.3  # cosine similarity above which an image "shows" a hypothesis
    text_template: str = "{}"  # how a hypothesis is phrased for the CLIP text encoder
    exact_cap: int = 200000  # images (both sets) up to which AUROC is exact; beyond: histograms
    histogram_bins: int = 2048  # bins over [-1, 1]; AUROC error bound shrinks with more bins


@dataclass
class EvaluateConfig:
    enabled: bool = False
    evaluator: str = "llm_judge"
    ground_truth_a: str | None = None  # what set A shows; defaults to group_a / folder name
    ground_truth_b: str | None = None
    top_k: int = 5  # hypotheses judged (Acc@1, Acc@5 and Acc@N over these)


@dataclass
class CacheConfig:
    root: str | None = (
        None  # content-addressed embedding/caption cache (local or s3://); null = off
    )


@dataclass
class RayConfig:
    address: str | None = None  # null: start a local Ray; "auto" or host:port: join a cluster
    num_cpus: int | None = None  # local Ray only; null = max(4, cores)
    object_store_memory_mb: int | None = None  # local Ray only


@dataclass
class ReportConfig:
    thumbnails_per_set: int = 8
    top_n_print: int = 5  # hypotheses printed at the end of the run


@dataclass
class DescribeConfig:
    models: str = "tiny"  # model preset: tiny | cpu | gpu
    output_dir: str = "runs/latest"  # run folder, created if absent
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    propose: ProposeConfig = field(default_factory=ProposeConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


_CHOICES: dict[str, tuple[str, ...]] = {
    "models": PRESETS,
    "clip.precision": ("fp32", "fp16", "bf16"),
    "captioner.kind": ("blip", "blip2", "vllm"),
    "captioner.precision": ("fp32", "fp16", "bf16"),
    "llm.backend": ("serve", "external"),
    "llm.engine": ("transformers", "vllm"),
    "caption.source": ("model", "manifest", "auto"),
    "propose.proposer": ("llm",),
    "rank.ranker": ("clip",),
    "evaluate.evaluator": ("llm_judge",),
}


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            keys.extend(_valid_keys(value, f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def valid_keys() -> list[str]:
    """Every settable dotted key, for error messages and docs."""
    return _valid_keys(DescribeConfig())


def _key_error(key: str, reason: str) -> ConfigError:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k for k in keys if k.startswith(section)] if section else keys
    return ConfigError(f"config key '{key}': {reason}.{hint} Valid keys: {', '.join(siblings)}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = str(exc.full_key or exc.key or "?")
        raise _key_error(key, f"unknown key in {source}") from None
    except OmegaConfBaseException as exc:
        key = str(exc.full_key or exc.key or "?")
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"config key '{key}' in {source}: {msg}") from None


def _load_yaml(path: Path, what: str) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' not found; pass an existing YAML file")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml errors have many types
        raise ConfigError(f"{what} '{path}' is not valid YAML: {exc}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{what} '{path}' must hold a mapping of keys, not a list or a scalar")
    return loaded


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' must look like key=value (e.g. models=tiny)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:
        raise ConfigError(f"overrides {overrides}: {exc}") from None


def preset_path(name: str) -> Path:
    return Path(str(resources.files("visdiff.presets").joinpath(f"{name}.yaml")))


def load_config(
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    base_file: str | Path | None = None,
) -> DescribeConfig:
    """Build and validate the run config.

    `base_file` defaults to `base.yaml` beside the experiment file when one exists there.
    """
    overrides = list(overrides or [])
    schema = OmegaConf.structured(DescribeConfig)
    layers: list[tuple[DictConfig, str]] = []
    if config_file is not None:
        config_path = Path(config_file)
        experiment = _load_yaml(config_path, "config file")
        if base_file is None and (config_path.parent / "base.yaml").is_file():
            base_file = config_path.parent / "base.yaml"
        if base_file is not None and Path(base_file).resolve() != config_path.resolve():
            layers.append((_load_yaml(Path(base_file), "base config"), str(base_file)))
        layers.append((experiment, str(config_path)))
    elif base_file is not None:
        layers.append((_load_yaml(Path(base_file), "base config"), str(base_file)))
    cli = _parse_overrides(overrides)

    # The preset name may come from any layer; find it first, then insert the preset's layer
    # right after the base so that experiment files and the command line still win.
    probe = schema
    for layer, source in layers:
        probe = _merge(probe, layer, source)
    probe = _merge(probe, cli, "command-line overrides")
    preset = str(probe.models)
    if preset not in PRESETS:
        raise _choice_error("models", preset)
    preset_layer = (_load_yaml(preset_path(preset), "model preset"), f"preset '{preset}'")
    base_layers = layers[:1] if base_file is not None else []
    rest = layers[len(base_layers) :]

    merged = schema
    for layer, source in [*base_layers, preset_layer, *rest, (cli, "command-line overrides")]:
        merged = _merge(merged, layer, source)
    config: DescribeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def _choice_error(key: str, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' = '{value}' is not one of: {', '.join(_CHOICES[key])}")


def _get(config: DescribeConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(config: DescribeConfig) -> None:
    """Cross-field checks that types alone cannot express; raises ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        if _get(config, key) not in choices:
            raise _choice_error(key, _get(config, key))
    data = config.data
    by_manifest = data.manifest is not None
    by_folders = data.set_a is not None or data.set_b is not None
    if by_manifest and by_folders:
        raise ConfigError(
            "config keys 'data.manifest' and 'data.set_a'/'data.set_b' exclude each other; "
            "give either a manifest with data.group_a/data.group_b, or two folders"
        )
    if not by_manifest and not by_folders:
        raise ConfigError(
            "no input: set data.manifest (+ data.group_a, data.group_b) or data.set_a and data.set_b"
        )
    if by_manifest and (not data.group_a or not data.group_b):
        raise ConfigError("data.manifest needs data.group_a and data.group_b (group_name values)")
    if by_folders and (not data.set_a or not data.set_b):
        raise ConfigError("both data.set_a and data.set_b must be given (one folder per set)")
    for key, value in (("data.set_a", data.set_a), ("data.set_b", data.set_b)):
        if value is None:
            continue
        items = list(value) if isinstance(value, list | ListConfig) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            raise ConfigError(
                f"config key '{key}' must be a folder, a shard pattern or a list of shard paths"
            )
    if data.max_num_samples < 0:
        raise ConfigError(
            f"config key 'data.max_num_samples' must be >= 0 (0 = no cap), got {data.max_num_samples}"
        )
    positive = {
        "clip.num_decoders": config.clip.num_decoders,
        "rank.exact_cap": config.rank.exact_cap,
        "rank.histogram_bins": config.rank.histogram_bins,
        "propose.num_rounds": config.propose.num_rounds,
        "propose.num_samples": config.propose.num_samples,
        "propose.max_hypotheses_per_round": config.propose.max_hypotheses_per_round,
        "clip.batch_size": config.clip.batch_size,
        "clip.num_actors": config.clip.num_actors,
        "captioner.batch_size": config.captioner.batch_size,
        "captioner.num_actors": config.captioner.num_actors,
        "llm.max_tokens": config.llm.max_tokens,
        "llm.num_replicas": config.llm.num_replicas,
        "evaluate.top_k": config.evaluate.top_k,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {value}")
    if config.data.num_blocks < 0:
        raise ConfigError(
            f"config key 'data.num_blocks' must be >= 0, got {config.data.num_blocks}"
        )
    if not -1.0 <= config.rank.classify_threshold <= 1.0:
        raise ConfigError("config key 'rank.classify_threshold' must lie in [-1, 1] (cosine)")
    if "{}" not in config.rank.text_template:
        raise ConfigError("config key 'rank.text_template' must contain '{}' for the hypothesis")
    if config.llm.backend == "external" and not config.llm.base_url:
        raise ConfigError("llm.backend=external needs llm.base_url (an OpenAI-compatible /v1 URL)")
    if not config.output_dir:
        raise ConfigError("config key 'output_dir' must be a folder path")


def to_yaml(config: DescribeConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: DescribeConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]
