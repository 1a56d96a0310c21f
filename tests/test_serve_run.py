"""The Serve config in deployments/ starts with the real `serve run` CLI on a real (one-node) Ray
cluster started with `ray start`, answers the OpenAI API on its route prefix, serves a describe
job submitted to the same cluster as an external LLM, and goes away on Ctrl-C (SIGINT).

The cluster is separate from the session's in-process Ray (own ports, temp dir and auth token)
and is stopped process by process, never with `ray stop`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cluster_nodes import LocalCluster, free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "deployments" / "llm_tiny.yaml"
READY_TIMEOUT_S = 180.0
SERVE_ACTORS = ("ServeController", "ProxyActor", "ServeReplica")


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """One head node: the Serve app (1 CPU) and a describe job's stages fit on it together."""
    nodes = LocalCluster(root=tmp_path_factory.mktemp("serve-cluster"))
    try:
        nodes.start_head(num_cpus=4, resources={"head": 1})
        yield nodes
    finally:
        nodes.shutdown()
    assert nodes.leftover_pids() == [], "processes of the test cluster survived its shutdown"


def _config_on_port(tmp: Path, port: int) -> tuple[Path, dict]:
    """The deployment YAML with only its HTTP port changed (`serve run` has no port flag; the
    config's http_options win)."""
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = port
    path = tmp / CONFIG.name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config


class ServeRun:
    """`serve run CONFIG --address GCS` as a subprocess, run from the repository root."""

    def __init__(self, cluster: LocalCluster, tmp: Path) -> None:
        self.port = free_port()
        self.config_path, config = _config_on_port(tmp, self.port)
        app = config["applications"][0]
        self.served_name = app["args"]["served_model_name"]
        self.base_url = f"http://127.0.0.1:{self.port}{app['route_prefix']}/v1"
        self.log_path = tmp / "serve_run.log"
        serve_bin = str(Path(sys.executable).with_name("serve"))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [serve_bin, "run", str(self.config_path), "--address", cluster.gcs_address],
                cwd=REPO,
                env=cluster.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                response = httpx.get(f"{self.base_url}/models", timeout=5)
                if response.status_code == 200:
                    return response.json()
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"serve run exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{self.base_url}/models not answering:\n{self.log_tail()}")
            time.sleep(1.0)

    def interrupt(self, timeout_s: float = 60.0) -> int:
        """Ctrl-C: `serve run` shuts Serve down on the cluster, then exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                pytest.fail(f"serve run ignored SIGINT for {timeout_s} s:\n{self.log_tail()}")
        return self.proc.returncode


@pytest.fixture(scope="module")
def serve_run(head, tmp_path_factory):
    running = ServeRun(head, tmp_path_factory.mktemp("serve-run"))
    try:
        running.wait_ready()
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(timeout=10)


def _alive_serve_actors(cluster: LocalCluster) -> list[str]:
    actors = cluster.list_state("actors", [("state", "=", "ALIVE")])
    return [a.class_name for a in actors if (a.class_name or "").startswith(SERVE_ACTORS)]


@pytest.mark.timeout(300)
def test_serve_run_answers_openai_chat(serve_run, head):
    models = serve_run.wait_ready()
    assert models["object"] == "list"
    assert [card["id"] for card in models["data"]] == [serve_run.served_name]

    response = httpx.post(
        f"{serve_run.base_url}/chat/completions",
        json={
            "model": serve_run.served_name,
            "messages": [{"role": "user", "content": "Name one difference between A and B."}],
            "max_tokens": 8,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert isinstance(body["id"], str) and body["id"]
    assert body["model"] == serve_run.served_name
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 8

    # Serve's actors run on the cluster that `ray start` made, not in some private Ray.
    assert {"ServeController", "ProxyActor"} <= set(_alive_serve_actors(head))


@pytest.mark.timeout(400)
def test_describe_job_uses_the_running_app(serve_run, head, examples_dir, tmp_path):
    run_dir = tmp_path / "run"
    client = head.job_client()
    sid = client.submit_job(
        entrypoint=" ".join(
            [
                "python",
                "jobs/describe.py",
                "--config",
                "configs/examples_manifest.yaml",
                f"data.manifest={examples_dir / 'manifest.csv'}",
                f"output_dir={run_dir}",
                "caption.source=manifest",
                "llm.backend=external",
                f"llm.base_url={serve_run.base_url}",
                f"llm.external_model={serve_run.served_name}",
                "evaluate.evaluator=none",
                "propose.num_rounds=2",
                "propose.num_samples=6",
            ]
        ),
        runtime_env={"working_dir": str(REPO), "excludes": [".venv", "runs", ".git"]},
    )
    deadline = time.monotonic() + 360
    while not (status := client.get_job_status(sid)).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(sid)[-6000:]
        time.sleep(1.0)
    logs = client.get_job_logs(sid)
    assert status.value == "SUCCEEDED", logs[-8000:]
    assert "Top hypotheses" in logs

    ranked = json.loads((run_dir / "ranked.json").read_text())
    assert ranked and all(r["n_a"] == 100 and r["n_b"] == 100 for r in ranked)
    proposals = [
        json.loads(line) for line in (run_dir / "hypotheses.jsonl").read_text().splitlines()
    ]
    assert {p["round"] for p in proposals} == {0, 1}
    # The job used the app that `serve run` started and left it running.
    assert serve_run.proc.poll() is None
    assert httpx.get(f"{serve_run.base_url}/models", timeout=10).status_code == 200


@pytest.mark.timeout(200)
def test_serve_run_ctrl_c_removes_serve(serve_run, head):
    code = serve_run.interrupt()
    assert code == 0, serve_run.log_tail()
    deadline = time.monotonic() + 60
    while left := _alive_serve_actors(head):
        assert time.monotonic() < deadline, f"Serve actors still alive: {left}"
        time.sleep(1.0)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{serve_run.base_url}/models", timeout=5)
