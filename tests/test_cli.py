"""The command-line contract: bad input stops before Ray or any model starts, with a one-line
error naming the input and a non-zero exit code."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_unavailable_model_preset_fails_early_with_the_fix(image_folder):
    result = run_cli(
        "describe", f"data.set_a={image_folder}", f"data.set_b={image_folder}", "models=cpu"
    )
    assert result.returncode == 4
    line = _one_line_error(result)
    assert "models=tiny" in line and "Traceback" not in result.stderr


def test_keys_lists_every_key():
    result = run_cli("keys")
    assert result.returncode == 0
    assert "data.manifest" in result.stdout.split() and "llm.api_key_env" in result.stdout.split()
