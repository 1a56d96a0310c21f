"""The command-line contract: bad input stops before Ray or any model starts, with a one-line
error naming the input and a non-zero exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    return subprocess.run(
        [sys.executable, "-m", "visdiff", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (16, 16), "red").save(folder / "x.jpg")
    return folder


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("visdiff: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_folder_fails_fast_naming_it(tmp_path, image_folder):
    started = time.monotonic()
    result = run_cli("describe", f"data.set_a={tmp_path / 'nope'}", f"data.set_b={image_folder}")
    assert result.returncode == 3
    assert str(tmp_path / "nope") in _one_line_error(result)
    assert time.monotonic() - started < 60  # no Ray, no model load
    assert "Started a local Ray" not in result.stderr and "ray" not in result.stdout.lower()


def test_empty_set_fails(tmp_path, image_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("describe", f"data.set_a={image_folder}", f"data.set_b={empty}")
    assert result.returncode == 3
    assert str(empty) in _one_line_error(result)


def test_manifest_without_columns_and_unknown_groups(tmp_path, image_folder):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\nimgs/x.jpg,a\n")
    result = run_cli("describe", f"data.manifest={manifest}", "data.group_a=a", "data.group_b=b")
    assert result.returncode == 3
    line = _one_line_error(result)
    assert "path" in line and "group_name" in line and str(manifest) in line

    manifest.write_text("path,group_name\nimgs/x.jpg,cats\n")
    result = run_cli(
        "describe", f"data.manifest={manifest}", "data.group_a=cats", "data.group_b=dogs"
    )
    assert result.returncode == 3
    line = _one_line_error(result)
    assert "dogs" in line and "cats" in line  # the missing one and the available ones


def test_config_errors_exit_2_naming_the_key(image_folder):
    result = run_cli(
        "describe", f"data.set_a={image_folder}", f"data.set_b={image_folder}", "rank.treshold=1"
    )
    assert result.returncode == 2
    assert "rank.treshold" in _one_line_error(result)


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("llm.base_url=file:///etc/passwd", "http:// or https://"),
        ("llm.temperature=99", "[0, 2]"),
        ("rank.text_template=a photo of {} {", "{{ and }}"),
    ],
)
def test_out_of_range_and_bad_urls_exit_2_before_ray(image_folder, override, allowed):
    started = time.monotonic()
    result = run_cli(
        "describe", f"data.set_a={image_folder}", f"data.set_b={image_folder}", override
    )
    assert result.returncode == 2
    line = _one_line_error(result)
    assert override.split("=")[0] in line and allowed in line
    assert "Traceback" not in result.stderr and "Started a local Ray" not in result.stderr
    assert time.monotonic() - started < 60


def test_unavailable_model_preset_fails_early_with_the_fix(image_folder):
    result = run_cli(
        "describe", f"data.set_a={image_folder}", f"data.set_b={image_folder}", "models=cpu"
    )
    assert result.returncode == 4
    line = _one_line_error(result)
    assert "models=tiny" in line and "Traceback" not in result.stderr


# ---------------------------------------------------------------- help, version, keys

VISDIFF = Path(sys.executable).with_name("visdiff")  # the installed console script


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    return subprocess.run(
        [str(VISDIFF), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_help_is_written_for_users_with_examples():
    result = run_script("--help")
    assert result.returncode == 0
    out = result.stdout
    for command in ("describe", "demo", "embed", "keys"):
        assert f"    {command}  " in out  # each command with its one-line summary
    assert "examples:" in out and "visdiff describe data.set_a=" in out
    assert "exit codes:" in out and "visdiff keys" in out
    describe = run_script("describe", "--help")
    assert "--verbose" in describe.stdout and "key=value" in describe.stdout
    assert "--overwrite" in describe.stdout
    assert "example:" in describe.stdout


def test_version_comes_from_the_package_metadata():
    from importlib import metadata

    result = run_script("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"visdiff {metadata.version('visdiff')}"


def test_keys_show_each_default_and_description_and_paste_as_overrides():
    from visdiff.config import key_docs, load_config, yaml_value

    result = run_script("keys")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    docs = key_docs()
    assert len(lines) == len(docs)
    for line, doc in zip(lines, docs, strict=True):
        assignment, description = line.split("  # ", 1)
        assert assignment.strip() == f"{doc.key}={yaml_value(doc.default)}"
        assert description == doc.doc
    rank_lines = [line.split()[0] for line in lines if line.startswith("rank.")]
    config = load_config(None, ["data.set_a=/a", "data.set_b=/b", *rank_lines])
    assert config.rank.text_template == "{}" and config.rank.exact_cap == 200000

    clip = run_script("keys", "clip.").stdout.splitlines()
    assert clip and all(line.startswith("clip.") for line in clip)
    assert len(clip) == sum(1 for d in docs if d.key.startswith("clip."))
    assert run_script("keys", "--yaml").stdout == (REPO / "configs" / "base.yaml").read_text()

    unknown = run_script("keys", "nope")
    assert unknown.returncode == 2 and "nope" in _one_line_error(unknown)


def test_keys_survives_a_closed_pipe():
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [str(VISDIFF), "keys"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # the reader is gone before visdiff writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception" not in err

    shell = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"'{VISDIFF}' keys | head -3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0 and len(shell.stdout.splitlines()) == 3
    assert shell.stderr == ""


def _unexpected_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("visdiff:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("visdiff: unexpected error: RuntimeError: yaml writer broke ")
    return lines[0]


def test_unexpected_error_is_one_line_and_a_traceback_in_the_run_folder(
    tmp_path, image_folder, monkeypatch, capsys
):
    """A library raising what we never expect (here omegaconf, while config.yaml is written
    inside the run) is not a bare trace: one line, exit 70, the trace in the run folder."""
    from omegaconf import OmegaConf

    from visdiff.cli import UNEXPECTED_EXIT_CODE, main

    def broken(*args, **kwargs):
        raise RuntimeError("yaml writer broke\nsecond line")

    Image.new("RGB", (16, 16), "blue").save(image_folder / "y.jpg")
    manifest = image_folder / "m.csv"
    rows = [f"{name},{group},a {group} square" for name in ("x.jpg", "y.jpg") for group in "ab"]
    manifest.write_text("path,group_name,caption\n" + "\n".join(rows) + "\n")
    run_dir = tmp_path / "run"
    monkeypatch.setattr(OmegaConf, "to_yaml", broken)
    code = main(
        [
            "describe",
            "models=offline",
            f"data.manifest={manifest}",
            "data.group_a=a",
            "data.group_b=b",
            f"output_dir={run_dir}",
        ]
    )
    assert code == UNEXPECTED_EXIT_CODE == 70
    line = _unexpected_line(capsys.readouterr().err)
    assert line.endswith(f"(full traceback: {run_dir / 'traceback.txt'})")
    trace = (run_dir / "traceback.txt").read_text()
    assert trace.startswith("Traceback") and "second line" in trace and "to_yaml" in trace
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == 70
    assert status["traceback"] == "traceback.txt" and "yaml writer broke" in status["error"]


def test_unexpected_error_before_the_run_folder_goes_to_a_temp_file(
    tmp_path, image_folder, monkeypatch, capsys
):
    import yaml

    from visdiff.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("yaml writer broke")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(yaml, "safe_dump", broken)  # `visdiff keys --yaml` renders with it
    assert main(["keys", "--yaml"]) == 70
    line = _unexpected_line(capsys.readouterr().err)
    path = Path(line.rsplit("(full traceback: ", 1)[1].rstrip(")"))
    assert path.parent == tmp_path and path.name.startswith("visdiff-traceback-")
    assert "RuntimeError: yaml writer broke" in path.read_text()
