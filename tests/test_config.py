"""Config loading: layering, typed errors that name the key, and base.yaml kept in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from visdiff.config import DescribeConfig, load_config, valid_keys
from visdiff.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "base.yaml"
FOLDERS = ["data.set_a=/tmp/a", "data.set_b=/tmp/b"]


def test_base_yaml_holds_every_default_exactly():
    base = OmegaConf.to_container(OmegaConf.load(BASE))
    defaults = OmegaConf.to_container(OmegaConf.structured(DescribeConfig))
    assert base == defaults


def test_every_key_in_base_yaml_has_a_comment_or_section_comment():
    lines = BASE.read_text().splitlines()
    for key in ("models:", "output_dir:", "  max_num_samples:", "  classify_threshold:"):
        line = next(line for line in lines if line.startswith(key))
        assert "#" in line, line


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
