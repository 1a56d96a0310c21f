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


# S3 tests talk to a real S3 API server (moto's server mode) on loopback, through a proxy that
# can throttle at a test's request (tests/slowdown_proxy.py; pass-through otherwise). The proxy's
# address and dummy credentials are set before any Ray worker starts, so that workers inherit
# them too, and a throttled run can use the session's warm workers.
S3_PORT = _pick_port()  # moto
S3_PROXY_PORT = _pick_port()  # the proxy in front of it: every S3 client's endpoint
while S3_PROXY_PORT == S3_PORT:
    S3_PROXY_PORT = _pick_port()
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{S3_PROXY_PORT}"
os.environ.pop("AWS_ENDPOINT_URL_S3", None)  # would win over AWS_ENDPOINT_URL
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
def s3_proxy():
    """moto's S3 server as a separate process on loopback, behind a pass-through SlowdownProxy
    on the session's AWS_ENDPOINT_URL; yields the proxy (`with s3_proxy.throttle(every=3):`)."""
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.slowdown_proxy import running_proxy

    upstream = f"http://127.0.0.1:{S3_PORT}"
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(S3_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(upstream, timeout=1)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto S3 server did not start on {upstream}")
                time.sleep(0.2)
        with running_proxy(upstream, port=S3_PROXY_PORT) as proxy:
            yield proxy
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def s3_server(s3_proxy) -> str:
    """The session's S3 endpoint URL (the proxy in front of moto)."""
    return s3_proxy.endpoint


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket per test; yields its name."""
    import uuid

    import boto3

    name = f"visdiff-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
