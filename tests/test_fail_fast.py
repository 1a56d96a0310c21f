"""A failure in one stage stops the others: an LLM that refuses the key fails the run at once,
without waiting for every image to be embedded in the background (issue: a wrong API key
reported hours later at LAION scale)."""

from __future__ import annotations

import json
import time

import pytest

from tests.openai_standin import manifest_run_argv, serve_standin
from visdiff.cli import main

pytestmark = pytest.mark.e2e


def test_a_refused_key_stops_the_background_embedding(
    ray_session, examples_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("VISDIFF_WRONG_KEY", "sk-wrong")
    run_dir = tmp_path / "run"
    started = time.monotonic()
    with serve_standin(["never sent"], require_key="sk-right") as standin:
        code = main(
            manifest_run_argv(
                examples_dir,
                run_dir,
                standin.base_url,
                "llm.api_key_env=VISDIFF_WRONG_KEY",
                "data.max_num_samples=0",  # all 200 images to embed in the background
                "clip.batch_size=2",  # ... in many small batches: minutes, were it waited for
                "evaluate.evaluator=none",
            )
        )
    seconds = time.monotonic() - started
    printed = capsys.readouterr()
    assert code == 5, printed.err
    (error,) = [line for line in printed.err.splitlines() if line.startswith("visdiff: error")]
    assert "401" in error or "key" in error.lower()
    # The embedding never finished: it was stopped, not waited for.
    assert "decode+embed: done" not in printed.out + printed.err
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == 5
    assert not (run_dir / "ranked.json").exists()
    print(f"failed after {seconds:.1f} s")
