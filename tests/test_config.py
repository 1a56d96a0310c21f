"""Config loading: layering, typed errors that name the key, and base.yaml kept in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from visdiff.config import DescribeConfig, key_docs, load_config, render_base_yaml, valid_keys
from visdiff.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "base.yaml"
FOLDERS = ["data.set_a=/tmp/a", "data.set_b=/tmp/b"]


def test_base_yaml_holds_every_default_exactly():
    base = OmegaConf.to_container(OmegaConf.load(BASE))
    defaults = OmegaConf.to_container(OmegaConf.structured(DescribeConfig))
    assert base == defaults


def test_base_yaml_is_rendered_from_the_key_descriptions():
    # One home for a key's documentation: its `setting(default, "description")` in config.py.
    assert BASE.read_text() == render_base_yaml(), (
        "configs/base.yaml is out of date: run `visdiff keys --yaml > configs/base.yaml`"
    )


def test_every_key_has_a_one_line_description():
    docs = key_docs()
    assert [d.key for d in docs] == valid_keys()
    for d in docs:
        assert d.doc.strip() and "\n" not in d.doc and "#" not in d.doc, d.key
    by_key = {d.key: d for d in docs}
    assert by_key["data.max_num_samples"].default == 5000
    assert "0 = every image" in by_key["data.max_num_samples"].doc
    assert all(len(line) <= 100 for line in render_base_yaml().splitlines())


def test_layers_base_preset_experiment_cli(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("models: cpu\nclip:\n  batch_size: 7\npropose:\n  num_rounds: 5\n")
    cfg = load_config(experiment, [*FOLDERS, "propose.num_rounds=2"], base_file=BASE)
    assert cfg.models == "cpu"
    assert cfg.clip.arch == "ViT-B-32"  # from the cpu preset
    assert cfg.clip.batch_size == 7  # experiment beats preset
    assert cfg.propose.num_rounds == 2  # command line beats experiment
    assert cfg.llm.model == "Qwen/Qwen2.5-0.5B-Instruct"


def test_preset_chosen_on_command_line():
    cfg = load_config(None, [*FOLDERS, "models=gpu"])
    assert cfg.clip.arch == "ViT-bigG-14" and cfg.llm.engine == "vllm"


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_config(None, [*FOLDERS, "propose.num_round=2"])
    message = str(info.value)
    assert "propose.num_round" in message
    assert "propose.num_rounds" in message  # suggestion / valid keys listed


def test_unknown_key_in_file_names_the_file(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("rank:\n  treshold: 0.2\n")
    with pytest.raises(ConfigError, match=r"rank\.treshold.*exp\.yaml"):
        load_config(experiment, FOLDERS)


def test_mistyped_value_names_key():
    with pytest.raises(ConfigError, match="propose.num_rounds"):
        load_config(None, [*FOLDERS, "propose.num_rounds=many"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("models=huge", "models"),
        ("llm.engine=sglang", "llm.engine"),
        ("caption.source=web", "caption.source"),
        ("propose.num_samples=0", "propose.num_samples"),
        ("rank.classify_threshold=3", "rank.classify_threshold"),
        ("rank.text_template=a photo", "rank.text_template"),
        ("llm.backend=external", "llm.base_url"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [*FOLDERS, override])


def test_input_modes_are_checked():
    with pytest.raises(ConfigError, match="no input"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="group_a"):
        load_config(None, ["data.manifest=m.csv"])
    with pytest.raises(ConfigError, match="exclude"):
        load_config(None, [*FOLDERS, "data.manifest=m.csv", "data.group_a=x", "data.group_b=y"])
    with pytest.raises(ConfigError, match="data.set_a"):
        load_config(None, ["data.set_a=[]", "data.set_b=/tmp/b"])
    cfg = load_config(None, ["data.set_a=[/s/0.tar,/s/1.tar]", "data.set_b=/tmp/b"])
    assert cfg.data.set_a == ["/s/0.tar", "/s/1.tar"]


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["models"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", FOLDERS)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing, FOLDERS)


def test_config_values_are_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path('{marker}').touch()"
    cfg = load_config(None, [*FOLDERS, f"output_dir={payload}"])
    assert cfg.output_dir == payload and not marker.exists()


def test_valid_keys_cover_sections():
    keys = valid_keys()
    assert "data.manifest" in keys and "llm.api_key_env" in keys and "models" in keys


def test_shipped_experiment_configs_load():
    for path in (REPO / "configs").glob("*.yaml"):
        if path.name == "base.yaml":
            continue
        overrides = [] if "data" in OmegaConf.load(path) else FOLDERS
        load_config(path, overrides)


# ---------------------------------------------------------------- ranges and URLs, at load time


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("seed=-1", "seed", "[0, 4294967295]"),
        ("data.max_num_samples=-1", "data.max_num_samples", "[0, 1000000000000]"),
        ("data.num_blocks=-1", "data.num_blocks", "[0, 1000000]"),
        ("clip.batch_size=0", "clip.batch_size", "[1, 65536]"),
        ("clip.num_actors=0", "clip.num_actors", "[1, 10000]"),
        ("clip.num_decoders=0", "clip.num_decoders", "[1, 10000]"),
        ("clip.num_cpus=-1", "clip.num_cpus", "[0, 1024]"),
        ("clip.num_gpus=-1", "clip.num_gpus", "[0, 64]"),
        ("captioner.max_new_tokens=0", "captioner.max_new_tokens", "[1, 4096]"),
        ("captioner.batch_size=0", "captioner.batch_size", "[1, 65536]"),
        ("captioner.num_actors=0", "captioner.num_actors", "[1, 10000]"),
        ("captioner.num_cpus=-2", "captioner.num_cpus", "[0, 1024]"),
        ("captioner.num_gpus=-0.5", "captioner.num_gpus", "[0, 64]"),
        ("llm.temperature=99", "llm.temperature", "[0, 2]"),
        ("llm.temperature=-0.1", "llm.temperature", "[0, 2]"),
        ("llm.max_tokens=0", "llm.max_tokens", "[1, 131072]"),
        ("llm.timeout_s=0", "llm.timeout_s", "(0, 86400]"),
        ("llm.timeout_s=-5", "llm.timeout_s", "(0, 86400]"),
        ("llm.timeout_s=nan", "llm.timeout_s", "(0, 86400]"),
        ("llm.timeout_s=inf", "llm.timeout_s", "(0, 86400]"),
        ("llm.http_port=-1", "llm.http_port", "[1, 65535]"),
        ("llm.http_port=70000", "llm.http_port", "[1, 65535]"),
        ("llm.num_replicas=0", "llm.num_replicas", "[1, 1000]"),
        ("llm.num_cpus=-1", "llm.num_cpus", "[0, 1024]"),
        ("llm.num_gpus=100", "llm.num_gpus", "[0, 64]"),
        ("propose.num_rounds=1000000", "propose.num_rounds", "[1, 1000]"),
        ("propose.num_samples=0", "propose.num_samples", "[1, 10000]"),
        ("propose.max_hypotheses_per_round=0", "propose.max_hypotheses_per_round", "[1, 1000]"),
        ("rank.classify_threshold=3", "rank.classify_threshold", "[-1, 1]"),
        ("rank.exact_cap=0", "rank.exact_cap", "[1, 1000000000]"),
        ("rank.histogram_bins=1000000000", "rank.histogram_bins", "[2, 1000000]"),
        ("rank.histogram_bins=1", "rank.histogram_bins", "[2, 1000000]"),
        ("evaluate.top_k=0", "evaluate.top_k", "[1, 1000]"),
        ("ray.num_cpus=-4", "ray.num_cpus", "[0, 100000]"),
        ("ray.object_store_memory_mb=-1", "ray.object_store_memory_mb", "[0, 100000000]"),
        ("ray.object_store_memory_mb=10", "ray.object_store_memory_mb", ">= 75"),
        ("report.evidence_k=0", "report.evidence_k", "[1, 100]"),
        ("report.top_n_print=-1", "report.top_n_print", "[0, 1000]"),
        ("llm.base_url=file:///etc/passwd", "llm.base_url", "http:// or https://"),
        ("llm.base_url=ftp://example.com/v1", "llm.base_url", "http:// or https://"),
        ("llm.base_url=https:///v1", "llm.base_url", "with a host"),
        ("llm.route_prefix=visdiff", "llm.route_prefix", "start with '/'"),
        ("rank.text_template=a photo of {} {", "rank.text_template", "{{ and }}"),
        ("rank.text_template='{} or {}'", "rank.text_template", "exactly one '{}'"),
        ("rank.text_template='a photo of {0}'", "rank.text_template", "exactly one '{}'"),
        ("rank.text_template='a photo of {:>9}'", "rank.text_template", "exactly one '{}'"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(override, key, allowed):
    with pytest.raises(ConfigError) as info:
        load_config(None, [*FOLDERS, override])
    message = str(info.value)
    assert f"'{key}'" in message and allowed in message, message
    assert "\n" not in message


def test_every_numeric_key_has_a_range():
    import typing
    from dataclasses import fields, is_dataclass

    from visdiff.config import BOUNDS

    def numeric_keys(cls: type, prefix: str = "") -> list[str]:
        keys = []
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            kind = hints[f.name]
            if is_dataclass(kind):
                keys += numeric_keys(kind, f"{prefix}{f.name}.")
            elif kind is not bool and ({int, float} & set(typing.get_args(kind) or (kind,))):
                keys.append(prefix + f.name)
        return keys

    numeric = numeric_keys(DescribeConfig)
    assert "llm.timeout_s" in numeric and "ray.num_cpus" in numeric
    assert sorted(numeric) == sorted(BOUNDS)


@pytest.mark.parametrize(
    "override",
    [
        "llm.timeout_s=0.5",
        "llm.temperature=0",
        "llm.temperature=2",
        "ray.num_cpus=0",
        "ray.object_store_memory_mb=0",
        "ray.object_store_memory_mb=75",
        "rank.text_template='a {{braced}} photo of {}'",
        "llm.base_url=http://127.0.0.1:8000/v1",
        "clip.num_gpus=0.25",
    ],
)
def test_values_at_the_edges_are_accepted(override):
    load_config(None, [*FOLDERS, override])


def test_shipped_presets_satisfy_the_ranges():  # configs/*.yaml: test_shipped_experiment_...
    for preset in ("tiny", "cpu", "gpu"):
        load_config(None, [*FOLDERS, f"models={preset}"])


# ---------------------------------------------------------------- secrets in config.yaml


def test_interpolated_secrets_are_written_unresolved(tmp_path, monkeypatch):
    from visdiff.config import to_yaml

    secret = "sk-fake-visdiff-4242"
    monkeypatch.setenv("VISDIFF_FAKE_SECRET", secret)
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        "data:\n"
        "  set_a: /tmp/a\n"
        "  set_b: ['/s/${oc.env:VISDIFF_FAKE_SECRET}/0.tar', /s/1.tar]\n"
        "llm:\n"
        "  backend: external\n"
        "  base_url: https://user:${oc.env:VISDIFF_FAKE_SECRET}@llm.example.com/v1\n"
        "cache:\n"
        "  root: s3://bucket/${oc.env:VISDIFF_FAKE_SECRET}\n"
    )
    config = load_config(experiment, [])
    # The run itself uses the resolved values ...
    assert config.llm.base_url == f"https://user:{secret}@llm.example.com/v1"
    assert config.cache.root == f"s3://bucket/{secret}"
    # ... but the run folder's config.yaml holds the interpolations as written.
    text = to_yaml(config)
    assert secret not in text
    assert "base_url: https://user:${oc.env:VISDIFF_FAKE_SECRET}@llm.example.com/v1" in text
    assert "root: s3://bucket/${oc.env:VISDIFF_FAKE_SECRET}" in text
    # And it still reproduces the run where the variable is set.
    written = tmp_path / "config.yaml"
    written.write_text(text)
    assert load_config(written, []) == config
