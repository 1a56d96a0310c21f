"""Typed run configuration: dataclass defaults <- configs/base.yaml <- model preset <- experiment
file <- `key=value` overrides. Validation happens here, before any model or Ray starts.

Each key's one-line description lives beside its default (`setting(default, "description")`);
`visdiff keys` prints them and configs/base.yaml is rendered from them (`render_base_yaml`, kept
equal by a test), so the documentation of a key has exactly one home."""

from __future__ import annotations

import difflib
import math
import string
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from visdiff.errors import ConfigError, first_line

PRESETS = ("tiny", "cpu", "gpu", "offline")
# Model names the config accepts beside hub ids and paths, defined once for every layer.
TINY = "tiny"  # captioner.model / llm.model: a seeded random model that runs offline
TINY_CLIP_ARCH = "visdiff-tiny-clip"  # clip.arch: the bundled tiny open_clip architecture
TINY_VLM = "tiny-vlm"  # llm.model: a seeded random vision-language model that runs offline
# Variant names: each is implemented once, registered under this name (pipeline/variants.py);
# tests/test_registry.py fails when a name here or in a config has no implementation.
PROPOSERS = ("llm", "vlm", "feature", "paired", "keyphrase")
RANKERS = ("clip", "caption", "llm", "vlm")
EVALUATORS = ("none", "llm_judge", "embedding")
NEEDS_LLM = {"propose.proposer": ("llm", "vlm", "paired"), "rank.ranker": ("llm", "vlm")}
HF_HUB_PREFIX = "hf-hub:"  # open_clip: weights from a hub repo
LOCAL_DIR_PREFIX = "local-dir:"  # open_clip: the architecture of a local model folder


def setting(default: Any, doc: str) -> Any:
    """A config field with its one-line description (shown by `visdiff keys`, base.yaml)."""
    return field(default=default, metadata={"doc": doc})


@dataclass
class DataConfig:
    """Inputs: a manifest + two group names, or two folders / shard sets."""

    manifest: str | None = setting(
        None, "CSV / Parquet / JSONL with columns path, group_name[, caption]"
    )
    group_a: str | None = setting(None, "group_name of set A in the manifest")
    group_b: str | None = setting(None, "group_name of set B in the manifest")
    set_a: Any = setting(
        None, "set A: folder or prefix, or shards (.tar/.parquet: glob, {000..099}, list)"
    )
    set_b: Any = setting(None, "set B: like data.set_a; A and B may differ in kind")
    image_column: str = setting("auto", "Parquet shards: column with the encoded image bytes")
    caption_column: str = setting(
        "auto", 'Parquet shards: alt-text column ("auto" tries common names)'
    )
    filter_a: str | None = setting(
        None, "set A as a filter over manifest columns, e.g. 'score >= 0.8' (not with group_a)"
    )
    filter_b: str | None = setting(
        None, "set B as a filter over manifest columns, e.g. 'score <= 0.2' (not with group_b)"
    )
    subset: list[str] | None = setting(
        None, "keep only manifest rows whose data.subset_column is one of these names"
    )
    subset_column: str = setting("group_name", "manifest column data.subset names values of")
    root: str | None = setting(
        None, "relative manifest paths resolve against this; null = the manifest's folder"
    )
    allow_outside_root: bool = setting(
        False, "accept absolute manifest paths and ones escaping data.root"
    )
    pair_column: str | None = setting(
        None, "manifest column pairing A with B images (proposer=paired); folders: file name"
    )
    purity: float = setting(
        1.0, "share of each set kept; the rest swapped with the other set (disjoint, seeded)"
    )
    max_num_samples: int = setting(5000, "per-set cap on images ranked (seeded); 0 = every image")
    num_blocks: int = setting(
        0, "Ray Data blocks per set (folders/manifests); 0 lets the program choose"
    )


@dataclass
class ClipConfig:
    """CLIP ranker model (the models preset fills these; override per key)."""

    arch: str = setting(TINY_CLIP_ARCH, "open_clip model name (or the bundled tiny config)")
    pretrained: str | None = setting(
        None, "open_clip tag, hf-hub:..., local checkpoint; null = random init"
    )
    precision: str = setting("fp32", "fp32 | fp16 | bf16 (fp16/bf16 only on GPU)")
    batch_size: int = setting(32, "images per CLIP forward pass")
    num_actors: int = setting(1, "CLIP model actors (images, then hypotheses)")
    num_decoders: int = setting(1, "actor-pool size of the decode + preprocess stage (CPU)")
    num_cpus: float = setting(1.0, "CPUs reserved per embedding actor")
    num_gpus: float = setting(0.0, "GPUs per embedding actor (fractions share a GPU)")
    decode: str = setting(
        "auto", "auto | actor | pool: decode in the CLIP actors or a CPU pool; auto: actor w/o GPU"
    )


@dataclass
class SentenceConfig:
    """Sentence embeddings: caption ranker, llm/vlm rankers' merging, embedding evaluator."""

    model: str = setting(
        "sentence-transformers/all-MiniLM-L6-v2",
        "hub id or local folder; the default is bundled",
    )
    batch_size: int = setting(64, "texts per forward pass")


@dataclass
class CaptionerConfig:
    """Captioner for the sampled images (image-to-text)."""

    kind: str = setting("blip", "blip | blip2 (transformers) | vllm (VLM on GPUs via ray.data.llm)")
    model: str = setting(TINY, 'hub id, local folder, or "tiny" (random init, offline)')
    prompt: str | None = setting(None, "optional text prefix for conditional captioning")
    max_new_tokens: int = setting(30, "longest caption, in tokens")
    precision: str = setting("fp32", "fp32 | fp16 | bf16 (fp16/bf16 only on GPU)")
    batch_size: int = setting(8, "images per captioner call")
    num_actors: int = setting(1, "actor-pool size of the caption stage")
    num_cpus: float = setting(1.0, "CPUs reserved per captioner actor")
    num_gpus: float = setting(0.0, "GPUs per captioner actor")


@dataclass
class LLMConfig:
    """Proposer / judge LLM behind the OpenAI chat-completions protocol."""

    backend: str = setting(
        "serve",
        "serve: our Serve app | external: OpenAI-compatible URL | none: no LLM",
    )
    engine: str = setting("transformers", "for backend=serve: transformers | vllm")
    model: str = setting(TINY, 'hub id, local folder, "tiny" or "tiny-vlm" (random, offline)')
    served_model_name: str = setting("visdiff-llm", "model name the Serve app answers to")
    base_url: str | None = setting(None, "external: e.g. https://api.openai.com/v1")
    external_model: str | None = setting(None, "external: model name sent in requests")
    api_key_env: str = setting(
        "OPENAI_API_KEY", "name of the env var holding the key (never the key)"
    )
    temperature: float = setting(0.7, "sampling temperature of the proposer")
    max_tokens: int = setting(256, "longest LLM answer, in tokens")
    timeout_s: float = setting(
        300.0, "deadline (s) of each LLM request attempt, from connect to the whole answer"
    )
    max_answer_bytes: int = setting(1 << 20, "larger LLM answers are refused (an error, not cut)")
    http_host: str = setting("127.0.0.1", "where Serve's HTTP proxy listens (backend=serve)")
    http_port: int = setting(8000, "port of Serve's HTTP proxy (backend=serve)")
    route_prefix: str = setting("/visdiff-llm", "URL prefix of the Serve app")
    app_name: str = setting("visdiff-llm", "name of the Serve application")
    serve_api_key_env: str = setting(
        "", "env var with the key our Serve app requires (needed beyond loopback)"
    )
    num_replicas: int = setting(1, "replicas of the LLM deployment")
    num_cpus: float = setting(1.0, "CPUs per LLM replica")
    num_gpus: float = setting(0.0, "GPUs per LLM replica")
    keep_running: bool = setting(
        False, "leave the Serve app up after the run (reused by later runs)"
    )


@dataclass
class JudgeLLMConfig(LLMConfig):
    """The judge's own LLM; the same backend, engine, model and URL as llm share its app.

    Set explicitly (the presets do): the judge is never silently the proposer's model; when the
    two name the same model they share one Serve app, anything else starts or calls its own."""

    served_model_name: str = setting("visdiff-judge", "model name the judge's Serve app answers to")
    temperature: float = setting(0.0, "sampling temperature of the judge")
    route_prefix: str = setting("/visdiff-judge", "URL prefix of the judge's Serve app")
    app_name: str = setting("visdiff-judge", "name of the judge's Serve application")


@dataclass
class CaptionConfig:
    """Where the proposer's captions come from."""

    source: str = setting(
        "model", "model: captioner | manifest: the input's captions/alt-text | auto: either"
    )


@dataclass
class ProposeConfig:
    """Proposer: rounds of seeded samples -> candidate differences (hypotheses)."""

    proposer: str = setting(
        "llm",
        "llm | vlm (image grids) | feature (captioner) | paired | keyphrase (no model)",
    )
    grid_images: int = setting(16, "proposer=vlm: images per set in its grid (up to)")
    grid_cell_px: int = setting(160, "proposer=vlm: side of one grid cell, in pixels")

    prompt: str = setting("clip_friendly", "built-in prompt template: clip_friendly | descriptive")
    prompt_file: str = setting(
        "", "your own prompt template file (placeholders: README); empty = propose.prompt"
    )
    num_rounds: int = setting(3, "LLM rounds, each on a fresh seeded sample")
    num_samples: int = setting(20, "images per set per round")
    max_hypotheses_per_round: int = setting(10, "hypotheses kept from each LLM answer")
    merge_similarity: float = setting(
        0.95, "cosine of rank text embeddings at which hypotheses merge; 1 = exact"
    )
    refine_rounds: int = setting(
        0, "LLM rounds sharpening the top hypotheses after ranking; 0 = off"
    )
    refine_top_k: int = setting(5, "top hypotheses (with A images they miss) shown per refinement")
    max_caption_chars: int = setting(
        500, "longer captions are cut for the LLM (counted: captions_cut)"
    )


@dataclass
class RankConfig:
    """Ranker: CLIP similarity of every image to every hypothesis, AUROC between sets."""

    ranker: str = setting(
        "clip",
        "clip | caption (input captions, sentence.model) | llm (yes/no on captions) | vlm",
    )
    max_judged_images: int = setting(
        500, "ranker=llm/vlm: per-set cap on images asked; 0 = data.max_num_samples"
    )
    judge_concurrency: int = setting(8, "ranker=llm/vlm: requests in flight per judging actor")
    classify_threshold: float = setting(
        0.3, 'cosine similarity above which an image "shows" a hypothesis'
    )
    text_template: str = setting("{}", "how a hypothesis is phrased for the CLIP text encoder")
    exact_cap: int = setting(
        200000, "images (both sets) up to which AUROC is exact; beyond: histograms"
    )
    histogram_bins: int = setting(
        2048, "bins over [-1, 1]; AUROC error bound shrinks with more bins"
    )
    alpha: float = setting(
        0.05, "q-value (Benjamini-Hochberg over all rows, both directions) for `significant`"
    )
    ci_level: float = setting(
        0.95, "level of the DeLong AUROC interval; `significant` also needs its low end > 0.5"
    )
    holdout: bool = setting(
        True, "p/q-values, AUROC CI, `significant`: only images the proposer never saw"
    )


@dataclass
class EvaluateConfig:
    """Evaluator: scores the top hypotheses against a given ground truth (metrics.json)."""

    evaluator: str = setting(
        "none",
        "none | llm_judge: 0/1/2 rubric by evaluate.llm | embedding: cosine to the truth",
    )
    ground_truth_a: str | None = setting(
        None, "what is more true of set A (required by an evaluator; no fallback)"
    )
    ground_truth_b: str | None = setting(None, "what is more true of set B (optional)")
    top_k: int = setting(5, "hypotheses scored (Acc@1, Acc@5 and Acc@N over these)")
    embedding_threshold: float = setting(
        0.6, "evaluator=embedding: cosine for score 2 (half of it: 1)"
    )
    llm: JudgeLLMConfig = field(default_factory=JudgeLLMConfig)


@dataclass
class CacheConfig:
    """Cache: embeddings/captions by model + image content hash; LLM answers by request."""

    root: str | None = setting(
        None, "content-addressed embedding/caption cache (local or s3://); null = off"
    )
    llm_answers: bool = setting(
        True, "reuse LLM answers from cache.root (same model, messages, sampling)"
    )


@dataclass
class RayConfig:
    """Ray: start a local instance or join a cluster."""

    address: str | None = setting(None, 'null: a local Ray; "auto" or host:port: join a cluster')
    num_cpus: int | None = setting(None, "local Ray only; null = max(4, cores)")
    object_store_memory_mb: int | None = setting(None, "local Ray only; null = Ray's default")


@dataclass
class ReportConfig:
    """Run-folder report and console summary."""

    top_n_print: int = setting(5, "hypotheses printed at the end of the run")
    evidence_k: int = setting(
        4, "evidence images per hypothesis and set (best of A and B, worst of the other set)"
    )


@dataclass
class DescribeConfig:
    models: str = setting("tiny", "model preset: tiny | cpu | gpu | offline")
    output_dir: str = setting("runs/latest", "run folder (local or s3://), created if absent")
    overwrite: bool = setting(
        False, "replace an earlier run in output_dir (else a non-empty output_dir is refused)"
    )
    seed: int = setting(0, "seed of the per-round samples, the caps and the shard order")
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    sentence: SentenceConfig = field(default_factory=SentenceConfig)
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
    "clip.decode": ("auto", "actor", "pool"),
    "captioner.kind": ("blip", "blip2", "vllm"),
    "captioner.precision": ("fp32", "fp16", "bf16"),
    "llm.backend": ("serve", "external", "none"),
    "llm.engine": ("transformers", "vllm"),
    "caption.source": ("model", "manifest", "auto"),
    "rank.ranker": RANKERS,
    "propose.proposer": PROPOSERS,
    "evaluate.evaluator": EVALUATORS,
    "evaluate.llm.backend": ("serve", "external"),
    "evaluate.llm.engine": ("transformers", "vllm"),
}


def valid_keys() -> list[str]:
    """Every settable dotted key, for error messages and docs."""
    return [prefix + f.name for prefix, _, f in _leaf_fields(DescribeConfig())]


@dataclass(frozen=True)
class KeyDoc:
    key: str  # dotted, e.g. data.max_num_samples
    default: Any
    doc: str  # one line


def key_docs() -> list[KeyDoc]:
    """Every settable key with its default and description, in base.yaml order."""
    return [
        KeyDoc(prefix + f.name, getattr(node, f.name), f.metadata["doc"])
        for prefix, node, f in _leaf_fields(DescribeConfig())
    ]


def _leaf_fields(node: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for f in fields(node):
        value = getattr(node, f.name)
        if is_dataclass(value):
            out.extend(_leaf_fields(value, f"{prefix}{f.name}."))
        else:
            out.append((prefix, node, f))
    return out


def yaml_value(value: Any) -> str:
    """A default as YAML writes it inline (null, true, 0.3, auto, '{}')."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


BASE_YAML_HEADER = """\
# visdiff: every default, with a comment. Experiment files override these;
# `key=value` on the command line overrides both. Model presets (tiny/cpu/gpu/offline) are applied
# after this file and before the experiment file.
# Rendered from visdiff/config.py (`visdiff keys --yaml`): edit the descriptions there.
"""


def render_base_yaml() -> str:
    """configs/base.yaml: every key, its default and its description, one section per class."""
    lines = [BASE_YAML_HEADER]
    config = DescribeConfig()
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            lines += ["", f"# {_first_line(type(value).__doc__)}", f"{f.name}:"]
            lines += _section_lines(value, "  ")
        else:
            lines.append(f"{f.name}: {yaml_value(value)}  # {f.metadata['doc']}")
    return "\n".join(lines) + "\n"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def _section_lines(section: Any, indent: str) -> list[str]:
    lines = []
    for sub in fields(section):
        value = getattr(section, sub.name)
        if is_dataclass(value):  # a nested section (evaluate.llm)
            lines += [f"{indent}{sub.name}:  # {_first_line(type(value).__doc__)}"]
            lines += _section_lines(value, indent + "  ")
        else:
            lines.append(f"{indent}{sub.name}: {yaml_value(value)}  # {sub.metadata['doc']}")
    return lines


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
        raise ConfigError(f"config key '{key}' in {source}: {first_line(exc)}") from None


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
    as_written = _interpolated_values(OmegaConf.to_container(merged, resolve=False))
    config: DescribeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    setattr(config, AS_WRITTEN, as_written)
    return config


# Attribute of a loaded config: {dotted key: value as written} for every value that was an
# interpolation (`${oc.env:NAME}`, `${other.key}`). The run uses the resolved value; `to_yaml`
# writes these as written, so that an environment secret never lands in a run folder.
AS_WRITTEN = "_as_written"


def _interpolated_values(node: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            found.update(_interpolated_values(value, f"{prefix}{key}."))
        elif _has_interpolation(value):
            found[f"{prefix}{key}"] = value
    return found


def _has_interpolation(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_interpolation(v) for v in value)
    return isinstance(value, str) and "${" in value


def _choice_error(key: str, value: Any) -> ConfigError:
    return ConfigError(f"config key '{key}' = '{value}' is not one of: {', '.join(_CHOICES[key])}")


def _get(config: DescribeConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@dataclass(frozen=True)
class Bound:
    """The allowed range of a numeric key: [low, high], or (low, high] when `open_low`."""

    low: float
    high: float = math.inf
    open_low: bool = False
    note: str = ""  # what special values mean, e.g. "0 = every image"

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        return above and value <= self.high  # NaN fails both

    def describe(self) -> str:
        low = _number(self.low)
        if self.high == math.inf:
            text = f"> {low}" if self.open_low else f">= {low}"
        else:
            text = f"in {'(' if self.open_low else '['}{low}, {_number(self.high)}]"
        return f"{text} ({self.note})" if self.note else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


ACTORS = Bound(1, 10_000)
CPUS = Bound(0, 1024)
GPUS = Bound(0, 64, note="fractions share a GPU")
BATCH = Bound(1, 65_536)

LLM_SECTIONS = ("llm", "evaluate.llm")
LLM_BOUNDS: dict[str, Bound] = {
    "temperature": Bound(0, 2),
    "max_tokens": Bound(1, 131_072),
    "timeout_s": Bound(0, 86_400, open_low=True, note="seconds"),
    "max_answer_bytes": Bound(1024, 1 << 30, note="bytes"),
    "http_port": Bound(1, 65_535),
    "num_replicas": Bound(1, 1000),
    "num_cpus": CPUS,
    "num_gpus": GPUS,
}

# Every numeric key and its range (a test checks that no numeric key is missing). Upper bounds
# stop values that would exhaust the machine (a thread per round, a histogram per bin).
BOUNDS: dict[str, Bound] = {
    "seed": Bound(0, 2**32 - 1),
    "data.max_num_samples": Bound(0, 10**12, note="0 = every image"),
    "data.num_blocks": Bound(0, 10**6, note="0 = the program chooses"),
    "clip.batch_size": BATCH,
    "clip.num_actors": ACTORS,
    "clip.num_decoders": ACTORS,
    "clip.num_cpus": CPUS,
    "clip.num_gpus": GPUS,
    "sentence.batch_size": BATCH,
    "captioner.max_new_tokens": Bound(1, 4096),
    "captioner.batch_size": BATCH,
    "captioner.num_actors": ACTORS,
    "captioner.num_cpus": CPUS,
    "captioner.num_gpus": GPUS,
    # llm.* and the judge's evaluate.llm.*: the same keys, the same ranges
    **{f"{section}.{key}": bound for section in LLM_SECTIONS for key, bound in LLM_BOUNDS.items()},
    "propose.num_rounds": Bound(1, 1000),
    "propose.num_samples": Bound(1, 10_000),
    "propose.max_hypotheses_per_round": Bound(1, 1000),
    "propose.merge_similarity": Bound(-1, 1, note="cosine similarity"),
    "propose.refine_rounds": Bound(0, 100, note="0 = off"),
    "propose.refine_top_k": Bound(1, 100),
    "propose.max_caption_chars": Bound(10, 100_000),
    "rank.classify_threshold": Bound(-1, 1, note="cosine similarity"),
    "rank.exact_cap": Bound(1, 10**9),
    "rank.histogram_bins": Bound(2, 10**6),
    "rank.alpha": Bound(0, 1, open_low=True),
    "rank.ci_level": Bound(0.5, 0.9999),
    "evaluate.top_k": Bound(1, 1000),
    "evaluate.embedding_threshold": Bound(-1, 1, note="cosine similarity"),
    "data.purity": Bound(0.5, 1, note="1 = no swap; 0.5 = sets fully mixed"),
    "propose.grid_images": Bound(1, 64),
    "propose.grid_cell_px": Bound(16, 1024),
    "rank.max_judged_images": Bound(0, 10**7, note="0 = data.max_num_samples"),
    "rank.judge_concurrency": Bound(1, 256),
    "ray.num_cpus": Bound(0, 100_000, note="0 or null = max(4, cores)"),
    "ray.object_store_memory_mb": Bound(0, 10**8, note="0 or null = Ray's default"),
    "report.top_n_print": Bound(0, 1000),
    "report.evidence_k": Bound(1, 100),
}
MIN_OBJECT_STORE_MB = 75  # Ray refuses a smaller object store


def _check_bounds(config: DescribeConfig) -> None:
    for key, bound in BOUNDS.items():
        value = _get(config, key)
        if value is None:  # optional keys (ray.*): null means the default
            continue
        if not bound.holds(value):
            raise ConfigError(f"config key '{key}' = {value} must be {bound.describe()}")
    store = config.ray.object_store_memory_mb
    if store and store < MIN_OBJECT_STORE_MB:
        raise ConfigError(
            f"config key 'ray.object_store_memory_mb' = {store} must be 0 (Ray's default) or "
            f">= {MIN_OBJECT_STORE_MB} (Ray's minimum object store)"
        )


def _check_text_template(template: str) -> None:
    """Exactly one `{}` (literal braces doubled), so that `template.format(hypothesis)` works."""
    key = "config key 'rank.text_template'"
    try:
        fields_ = [
            (name, spec, conversion)
            for _text, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise ConfigError(
            f"{key} = {template!r} is not a valid template ({exc}); write braces that are not "
            "the placeholder as {{ and }}"
        ) from None
    if fields_ != [("", "", None)]:
        raise ConfigError(
            f"{key} = {template!r} must contain exactly one '{{}}' for the hypothesis "
            "(e.g. 'a photo of {}'); write other braces as {{ and }}"
        )


def _check_base_url(url: str | None, key: str = "llm.base_url") -> None:
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"config key '{key}' = {url!r} must be an http:// or https:// URL with a host "
            "(e.g. https://api.openai.com/v1)"
        )


def _check_variants(config: DescribeConfig) -> None:
    """Cross-checks of the chosen proposer, ranker and evaluator against the rest."""
    if config.rank.ranker == "caption" and config.caption.source == "model":
        raise ConfigError(
            "rank.ranker=caption ranks the input's own captions (manifest column, alt-text): "
            "set caption.source=manifest or auto"
        )
    if config.llm.backend == "none":
        for key, names in NEEDS_LLM.items():
            if _get(config, key) in names:
                raise ConfigError(
                    f"{key}={_get(config, key)} needs an LLM but llm.backend=none: set "
                    "llm.backend=serve or external (with llm.base_url), or "
                    + (
                        "propose.proposer=keyphrase"
                        if key == "propose.proposer"
                        else "rank.ranker=clip"
                    )
                )
    ev = config.evaluate
    if ev.evaluator != "none" and not ev.ground_truth_a:
        raise ConfigError(
            f"evaluate.evaluator={ev.evaluator} needs the ground truth: set "
            "evaluate.ground_truth_a (what is more true of set A), or evaluate.evaluator=none"
        )
    if ev.evaluator == "llm_judge" and ev.llm.backend == "external" and not ev.llm.base_url:
        raise ConfigError(
            "evaluate.llm.backend=external needs evaluate.llm.base_url (an OpenAI-compatible "
            "/v1 URL)"
        )
    data = config.data
    if (data.filter_a or data.filter_b or data.subset or data.pair_column) and not data.manifest:
        raise ConfigError(
            "data.filter_a/filter_b/subset/pair_column select manifest rows: set data.manifest"
        )
    if config.propose.proposer == "paired" and data.manifest and not data.pair_column:
        raise ConfigError(
            "propose.proposer=paired with a manifest needs data.pair_column (the column that "
            "pairs an A image with a B image, e.g. prompt)"
        )


def is_loopback_host(host: str) -> bool:
    """Only this machine can reach it (a host name counts as reachable: it may resolve to any
    address)."""
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_serve_exposure(config: DescribeConfig) -> None:
    """Our Serve apps share one HTTP proxy: once any listens beyond loopback, every app served
    for this run must check a key (issue #11), and vLLM's app cannot."""
    served: dict[str, LLMConfig] = {}
    if config.llm.backend == "serve":
        served["llm"] = config.llm
    if config.evaluate.evaluator == "llm_judge" and config.evaluate.llm.backend == "serve":
        served["evaluate.llm"] = config.evaluate.llm
    exposed = [f"{k}.http_host" for k, c in served.items() if not is_loopback_host(c.http_host)]
    if not exposed:
        return
    where = f"{exposed[0]}={_get(config, exposed[0])}"
    for key, cfg in served.items():
        if cfg.engine == "vllm":
            raise ConfigError(
                f"{where} serves beyond loopback, and {key}.engine=vllm cannot check an API key: "
                f"set {exposed[0]}=127.0.0.1, or {key}.engine=transformers"
            )
        if not cfg.serve_api_key_env:
            raise ConfigError(
                f"{where} serves the LLM beyond loopback: set {key}.serve_api_key_env to the name "
                "of an env var holding a key (export VISDIFF_SERVE_KEY=$(openssl rand -hex 32); "
                f"{key}.serve_api_key_env=VISDIFF_SERVE_KEY), or {exposed[0]}=127.0.0.1"
            )


def validate(config: DescribeConfig) -> None:
    """Ranges and cross-field checks that types alone cannot express; raises ConfigError naming
    the key and what it allows, before any model or Ray starts."""
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
    for side in ("a", "b"):
        group, rule = getattr(data, f"group_{side}"), getattr(data, f"filter_{side}")
        if by_manifest and bool(group) == bool(rule):
            raise ConfigError(
                f"data.manifest needs exactly one of data.group_{side} (a group_name value) "
                f"and data.filter_{side} (a filter over manifest columns)"
            )
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
    _check_bounds(config)
    _check_text_template(config.rank.text_template)
    _check_base_url(config.llm.base_url)
    _check_base_url(config.evaluate.llm.base_url, "evaluate.llm.base_url")
    _check_variants(config)
    if config.llm.backend == "external" and not config.llm.base_url:
        raise ConfigError("llm.backend=external needs llm.base_url (an OpenAI-compatible /v1 URL)")
    _check_serve_exposure(config)
    for key in ("llm.route_prefix", "evaluate.llm.route_prefix"):
        if not str(_get(config, key)).startswith("/"):
            raise ConfigError(f"config key '{key}' = {_get(config, key)!r} must start with '/'")
    if not config.output_dir:
        raise ConfigError("config key 'output_dir' must be a folder path")


def judge_shares_llm(config: DescribeConfig) -> bool:
    """The judge uses the proposer's LLM only when its settings name the same one (backend,
    engine, model, URL): sharing is stated in the config, never a silent fallback."""
    judge, llm = config.evaluate.llm, config.llm
    same = ("backend", "engine", "model", "base_url", "external_model")
    return all(getattr(judge, key) == getattr(llm, key) for key in same)


def to_yaml(config: DescribeConfig) -> str:
    """The run's config as YAML (written to the run folder as config.yaml).

    Values the user gave as interpolations are written as written (`${oc.env:NAME}`), not
    resolved: they are how secrets reach a config, and the text still reproduces the run in the
    same environment (loading the file resolves it again)."""
    data = to_dict(config)
    for key, written in getattr(config, AS_WRITTEN, {}).items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = written
    return OmegaConf.to_yaml(OmegaConf.create(data))


def to_dict(config: DescribeConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]
