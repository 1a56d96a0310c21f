"""Run-folder integrity: a used output_dir is refused unless --overwrite, an overwrite clears the
earlier run's files (status.json first), and status.json, written last, tells a complete run
from a failed one. Local folders and s3:// prefixes (moto's server on loopback) alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from PIL import Image

from tests.nonroot import run_unprivileged
from tests.openai_standin import serve_standin
from visdiff.errors import ConfigError, InputError, LLMError
from visdiff.report.writers import RunFolder

REPO = Path(__file__).resolve().parents[1]
EARLIER_RUN = ("config.yaml", "ranked.json", "report.html", "metrics.json", "status.json")


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path) -> str:
    """A not-yet-existing run folder: a local path, or a prefix in a fresh moto bucket."""
    if request.param == "local":
        return str(tmp_path / "run")
    return f"s3://{request.getfixturevalue('s3_bucket')}/runs/x"


def _names(uri: str) -> set[str]:
    return set(RunFolder(uri).entries())


def _read(uri: str, name: str) -> str:
    from visdiff.io import storage

    return storage.read_bytes(f"{uri}/{name}").decode()


def _earlier_run(uri: str) -> None:
    folder = RunFolder(uri)
    for name in EARLIER_RUN:
        folder.write_text(name, '{"state": "complete"}' if name == "status.json" else "old")
    folder.write_text("notes.txt", "the user's own file")


def test_a_new_folder_is_claimed_without_creating_anything(run_uri):
    folder = RunFolder(run_uri)
    folder.check_unused(overwrite=False)
    assert folder.entries() == []
    if "://" not in run_uri:
        assert not Path(run_uri).exists()


def test_a_used_folder_is_refused_naming_it_and_the_fix(run_uri):
    _earlier_run(run_uri)
    with pytest.raises(ConfigError) as info:
        RunFolder(run_uri).check_unused(overwrite=False)
    message = str(info.value)
    assert run_uri in message and "--overwrite" in message and "ranked.json" in message
    RunFolder(run_uri).check_unused(overwrite=True)  # allowed, and changes nothing by itself
    assert _names(run_uri) == {*EARLIER_RUN, "notes.txt"}


def test_embed_stats_alone_do_not_block_a_describe_run(run_uri):
    RunFolder(run_uri).write_json("embed_stats.json", {"images": {}})
    RunFolder(run_uri).check_unused(overwrite=False)  # describe after `visdiff embed`
    with pytest.raises(ConfigError, match="embed_stats.json"):  # a second `visdiff embed`
        RunFolder(run_uri).check_unused(overwrite=False, only=("embed_stats.json",))


def test_overwrite_clears_the_earlier_run_but_not_other_files(run_uri):
    _earlier_run(run_uri)
    folder = RunFolder(run_uri)
    folder.begin()
    assert _names(run_uri) == {"notes.txt"}


def test_status_is_written_last_complete_or_failed(run_uri):
    folder = RunFolder(run_uri)
    folder.begin()
    with folder.recording_status():
        folder.write_text("config.yaml", "x: 1\n")
        folder.write_json("stats.json", {})
    status = json.loads(_read(run_uri, "status.json"))
    assert status["state"] == "complete" and status["files"] == ["config.yaml", "stats.json"]
    assert folder.written[-1] == "status.json"

    again = RunFolder(run_uri)
    again.begin()  # status.json goes first, then the rest
    assert _names(run_uri) == set()
    with pytest.raises(LLMError), again.recording_status():
        again.write_text("config.yaml", "x: 2\n")
        raise LLMError("cannot reach LLM endpoint http://127.0.0.1:9/v1\nafter 3 attempts")
    status = json.loads(_read(run_uri, "status.json"))
    assert status["state"] == "failed" and status["exit_code"] == 5
    assert status["error"] == "cannot reach LLM endpoint http://127.0.0.1:9/v1 after 3 attempts"
    assert status["files"] == ["config.yaml"]


def test_an_unexpected_error_is_recorded_with_its_type(tmp_path):
    folder = RunFolder(str(tmp_path / "run"))
    folder.begin()
    with pytest.raises(KeyError), folder.recording_status():
        raise KeyError("embedding")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status == {**status, "state": "failed", "error": "KeyError: 'embedding'", "exit_code": 1}


def test_output_dir_that_is_a_file_is_a_config_error(tmp_path, s3_bucket):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        RunFolder(str(a_file)).check_unused(overwrite=True)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="runs/file", Body=b"x")
    with pytest.raises(ConfigError, match="is a file"):
        RunFolder(f"s3://{s3_bucket}/runs/file").check_unused(overwrite=True)


def test_an_unreachable_s3_endpoint_is_a_one_line_input_error(monkeypatch):
    import socket
    import uuid

    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    uri = f"s3://unreachable-{uuid.uuid4().hex[:8]}/runs/x"  # a new bucket: a new S3 client
    with pytest.raises(InputError) as info:
        RunFolder(uri).check_unused(overwrite=False)
    assert uri in str(info.value) and "endpoint" in str(info.value)
    assert "\n" not in str(info.value)


def _check_unlistable_folder(root: Path) -> None:
    """Run as a user that mode bits bind (see tests/nonroot.py)."""
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(InputError, match="cannot be listed"):
            RunFolder(str(locked)).check_unused(overwrite=False)
    finally:
        locked.chmod(0o700)


def test_an_unlistable_local_folder_is_an_input_error(tmp_path):
    run_unprivileged(_check_unlistable_folder, tmp_path)


# ---------------------------------------------------------------- through the command line


def _tiny_manifest(root: Path) -> Path:
    """Three images per group with captions (caption.source=manifest: no captioner runs)."""
    rows = ["path,group_name,caption"]
    for group, colour in (("a", "red"), ("b", "blue")):
        for i in range(3):
            Image.new("RGB", (24, 24), colour).save(root / f"{group}{i}.png")
            rows.append(f"{group}{i}.png,{group},a {colour} square")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_cli_refuses_a_used_output_dir_before_reading_inputs(tmp_path):
    run_dir = tmp_path / "run"
    _earlier_run(str(run_dir))
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "visdiff", "describe", f"output_dir={run_dir}"]
        + [f"data.set_a={tmp_path / 'no-such-a'}", f"data.set_b={tmp_path / 'no-such-b'}"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("visdiff: error:")]
    assert len(errors) == 1 and str(run_dir) in errors[0] and "--overwrite" in errors[0]
    assert "Traceback" not in result.stderr and time.monotonic() - started < 60
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before  # untouched


def test_a_failed_rerun_never_leaves_the_earlier_results_looking_complete(ray_session, tmp_path):
    from visdiff.cli import main

    manifest = _tiny_manifest(tmp_path)
    run_dir = tmp_path / "run"
    _earlier_run(str(run_dir))
    args = [
        "describe",
        "--overwrite",
        f"data.manifest={manifest}",
        "data.group_a=a",
        "data.group_b=b",
        f"output_dir={run_dir}",
        "caption.source=manifest",
        "llm.backend=external",
        "propose.num_rounds=1",
        "propose.num_samples=3",
    ]
    with serve_standin(["- red"]) as standin:
        standin.fail_next(100, status=400)  # not retried: the proposer fails at once
        code = main([*args, f"llm.base_url={standin.base_url}"])
    assert code == 5
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == 5
    assert "400" in status["error"] and "\n" not in status["error"]
    names = {p.name for p in run_dir.iterdir()}
    assert names == {"config.yaml", "status.json", "notes.txt"}, names  # no old ranked.json
    assert (run_dir / "config.yaml").read_text() != "old"
