"""Shared fixtures: one local Ray per test session, the shared example data, offline hubs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No model hub here (and none wanted in tests): fail fast instead of trying to download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _pick_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# S3 tests talk to a real S3 API server (moto's server mode) on loopback. Its address and dummy
# credentials are set before any Ray worker starts, so that workers inherit them too.
S3_PORT = _pick_port()
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{S3_PORT}"
os.environ["AWS_ACCESS_KEY_ID"] = "visdiff-test"
os.environ["AWS_SECRET_ACCESS_KEY"] = "visdiff-test-secret"
os.environ["AWS_REGION"] = "us-east-1"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ.pop("AWS_PROFILE", None)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


def _shared_path(*parts: str) -> Path:
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing: CI must have ../shared beside the checkout")
        pytest.skip(f"{path} not present (a user's clone has no ../shared)")
    return path


def pytest_collection_modifyitems(config, items):
    """Two tiers. `-m "not e2e"` is the fast one to run while working: it leaves out every test
    that needs the session's Ray cluster, a Serve app, a subprocess running a whole job, the
    package registry or a fresh install. CI (`.ci/run`) runs both tiers."""
    slow_markers = ("registry", "install", "subprocess_job")
    for item in items:
        if "ray_session" in item.fixturenames or any(
            item.get_closest_marker(name) for name in slow_markers
        ):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The 200 real photos (yoga vs meditation) with manifest.csv."""
    return _shared_path("data", "visdiff_examples")


@pytest.fixture(scope="session")
def visdiffbench_dir() -> Path:
    """VisDiffBench PairedImageSets ground truth (no images): easy, medium, hard."""
    return _shared_path("data", "visdiffbench")


@pytest.fixture(scope="session")
def recorded_outputs(recorded_outputs_path) -> list[str]:
    """The 3 real GPT-4 proposer answers recorded for the shared example."""
    import json

    with open(recorded_outputs_path, encoding="utf-8") as handle:
        return [json.loads(line)["output"] for line in handle if line.strip()]


@pytest.fixture(scope="session")
def recorded_outputs_path() -> Path:
    return _shared_path("data", "visdiff_examples", "recorded_proposer_outputs.jsonl")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (2 cores here: keep it small)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,  # logical slots; stages and Serve replicas share the 2 physical cores
            object_store_memory=300 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_http_port() -> int:
    """Serve's HTTP proxy binds once per Ray instance: every test that starts an app uses this."""
    return _pick_port()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server as a separate process on loopback; yields its endpoint URL."""
    import subprocess
    import sys
    import time
    import urllib.request

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(S3_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto S3 server did not start on {endpoint}")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket per test; yields its name."""
    import uuid

    import boto3

    name = f"visdiff-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
