"""`ray job submit` of jobs/describe.py on a real two-node Ray cluster (head +
worker, two `ray start` processes on loopback): a job survives losing the worker node
mid-embedding, and a driver stopped mid-run leaves embeddings in the cache that the next run
reuses, with its CLIP model actors spread over both nodes. (jobs/embed.py is the same entry
point for `visdiff embed`, which tests/test_webscale_e2e.py runs against a filled cache.)

The cluster is separate from the session's in-process Ray (own ports, temp dir and auth token)
and is stopped process by process, never with `ray stop`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.cluster_nodes import LocalCluster
from tests.openai_standin import Delivery, serve_standin
from visdiff import schema

pytestmark = pytest.mark.e2e


REPO = Path(__file__).resolve().parents[1]
RUNTIME_ENV = {"working_dir": str(REPO), "excludes": [".venv", "runs", ".git"]}
JOB_TIMEOUT_S = 300.0
DATA_STAGES = ("Captioner", "ClipPreprocessor", "ClipActorCaller", "ClipModelActor")


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (2 CPUs, resource "head") + one worker node (2 CPUs, resource "worker")."""
    nodes = LocalCluster(root=tmp_path_factory.mktemp("cluster-logs"))
    try:
        nodes.start_head(num_cpus=2, resources={"head": 1})
        nodes.add_worker(num_cpus=2, resources={"worker": 1})
        assert len(nodes.alive_nodes()) == 2
        yield nodes
    finally:
        nodes.shutdown()
    assert nodes.leftover_pids() == [], "processes of the test cluster survived its shutdown"


@pytest.fixture(scope="module")
def manifest_x3(tmp_path_factory, examples_dir) -> Path:
    """The manifest's 100 + 100 photos three times over (hard links under new names) with
    their captions: 600 images keep the embedding stage busy long enough to lose a node in it."""
    import pandas as pd

    root = tmp_path_factory.mktemp("manifest_x3")
    table = pd.read_csv(examples_dir / "manifest.csv", keep_default_na=False)
    rows = []
    for copy in range(3):
        for row in table.itertuples(index=False):
            source = examples_dir / row.path
            target = root / f"{copy}_{source.parent.name}_{source.name}"
            try:
                target.hardlink_to(source)
            except OSError:
                shutil.copy(source, target)
            rows.append({"group_name": row.group_name, "path": target.name, "caption": row.caption})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def proposer_answers(recorded_outputs_path) -> list[str]:
    return [
        json.loads(line)["output"]
        for line in recorded_outputs_path.read_text().splitlines()
        if line.strip()
    ]


# --- helpers ----------------------------------------------------------------------------------


def submit(cluster: LocalCluster, script: str, args: list[str]) -> str:
    """What `ray job submit --working-dir . -- python jobs/X.py ...` does, via the SDK."""
    return cluster.job_client().submit_job(
        entrypoint=" ".join(["python", script, *args]), runtime_env=RUNTIME_ENV
    )


def wait_for_job(cluster: LocalCluster, sid: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    """Terminal status of the job; on timeout the job is stopped and the test fails with its
    log tail."""
    client = cluster.job_client()
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(sid)
        if status.is_terminal():
            return str(status.value)
        if time.monotonic() > deadline:
            client.stop_job(sid)
            pytest.fail(f"job {sid} still {status} after {timeout_s} s:\n{job_logs(cluster, sid)}")
        time.sleep(1.0)


def job_logs(cluster: LocalCluster, sid: str) -> str:
    return cluster.job_client().get_job_logs(sid)


def assert_succeeded(cluster: LocalCluster, sid: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    status = wait_for_job(cluster, sid, timeout_s)
    logs = job_logs(cluster, sid)
    assert status == "SUCCEEDED", f"job {sid} ended {status}:\n{logs[-8000:]}"
    return logs


def ray_job_id(cluster: LocalCluster, sid: str, timeout_s: float = 60.0) -> str:
    """The Ray job id of a submission (known once its driver has connected)."""
    client = cluster.job_client()
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(sid)
        if info.job_id:
            return info.job_id
        if info.status.is_terminal() or time.monotonic() > deadline:
            pytest.fail(f"job {sid} ({info.status}) never connected a driver:\n{info.message}")
        time.sleep(0.5)


def stage_actors(cluster: LocalCluster, job_id: str, stages=DATA_STAGES) -> list:
    """Ray Data map workers of the job whose callable is one of `stages` (any state)."""
    actors = cluster.list_state("actors", [("job_id", "=", job_id)])
    names = [(a, a.class_name or "") for a in actors]
    # Ray Data map workers are named "MapWorker(Stage)"; the CLIP model actors are plain actors.
    return [a for a, c in names if any(f"({s})" in c or c == s for s in stages)]


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    for name in schema.RUN_FILES:
        assert (run_dir / name).is_file(), f"{name} missing from {run_dir}"
    ranked = json.loads((run_dir / "ranked.json").read_text())
    stats = json.loads((run_dir / "stats.json").read_text())
    return ranked, stats


def assert_complete(run_dir: Path, n: int) -> dict:
    """Every image of both sets read, embedded and ranked; nothing skipped."""
    ranked, stats = read_run(run_dir)
    assert ranked, "no ranked hypotheses"
    assert all(r["n_a"] == n and r["n_b"] == n for r in ranked), [
        (r["n_a"], r["n_b"]) for r in ranked
    ]
    assert stats["images"]["a"]["ranked"] == n and stats["images"]["b"]["ranked"] == n
    assert stats["skipped"] == []
    return stats


def manifest_args(
    manifest: Path, run_dir: Path, base_url: str, *, num_blocks: int, num_actors: int
) -> list[str]:
    """A describe run on a manifest of the example photos with its captions and an external LLM
    (the stand-in): only the embedding stages put load on the cluster."""
    return [
        "--config",
        "configs/examples_manifest.yaml",
        f"data.manifest={manifest}",
        f"output_dir={run_dir}",
        "caption.source=manifest",
        "llm.backend=external",
        f"llm.base_url={base_url}",
        "llm.external_model=gpt-4",
        "evaluate.evaluator=none",
        "propose.num_rounds=2",
        "propose.num_samples=10",
        "clip.batch_size=4",
        f"clip.num_actors={num_actors}",
        f"data.num_blocks={num_blocks}",
    ]


# --- tests ------------------------------------------------------------------------------------


@pytest.mark.timeout(360)
def test_describe_job_survives_losing_the_worker_node(
    cluster, manifest_x3, proposer_answers, tmp_path
):
    run_dir = tmp_path / "run"
    worker = cluster.workers[-1]
    with serve_standin(proposer_answers) as llm:
        # One CLIP model actor that needs a whole node's 2 CPUs and the Ray Data stage that feeds
        # it: at least one of the two lands on the worker, and every image passes through both.
        args = manifest_args(manifest_x3, run_dir, llm.base_url, num_blocks=120, num_actors=1)
        sid = submit(cluster, "jobs/describe.py", [*args, "clip.num_cpus=2"])
        job_id = ray_job_id(cluster, sid)

        # Wait until an embedding-stage actor is up on the worker node, then crash that node.
        deadline = time.monotonic() + 180
        while True:
            on_worker = [
                a
                for a in stage_actors(cluster, job_id, ("ClipModelActor", "ClipActorCaller"))
                if a.node_id == worker.node_id and a.state == "ALIVE"
            ]
            if on_worker:
                break
            status = cluster.job_client().get_job_status(sid)
            assert not status.is_terminal(), f"job ended ({status}) before reaching the worker"
            assert time.monotonic() < deadline, "no embedding actor was placed on the worker"
            time.sleep(0.25)
        raylets = worker.raylet_pids()
        assert raylets, "the worker node has no raylet"
        worker.kill()
        assert worker.alive_pids() == []
        cluster.wait_for_node_dead(worker.node_id)

        # A replacement node joins (as an autoscaler would add one); the job carries on.
        replacement = cluster.add_worker(num_cpus=2, resources={"worker": 1})
        assert_succeeded(cluster, sid)

    assert_complete(run_dir, 300)
    # Ray restarted the stage actors that lived on the lost node (Ray Data's defaults for actor
    # pools: max_restarts=-1, max_task_retries=-1); their in-flight batches were retried. (A
    # restart may still be pending when the surviving actors have finished the stage.)
    killed = {a.actor_id for a in on_worker}
    after = [a for a in stage_actors(cluster, job_id) if a.actor_id in killed]
    placement = [(a.class_name, a.num_restarts, (a.node_id or "-")[:8]) for a in after]
    assert len(after) == len(killed), placement
    assert all(a.num_restarts >= 1 for a in after), placement
    assert replacement.node_id in {n["node_id"] for n in cluster.alive_nodes()}


@pytest.mark.timeout(360)
def test_cache_survives_a_stopped_driver(cluster, examples_dir, proposer_answers, tmp_path):
    from visdiff.config import CacheConfig

    assert "root" in CacheConfig.__dataclass_fields__
    manifest = examples_dir / "manifest.csv"
    cache = tmp_path / "cache"
    with serve_standin(proposer_answers) as llm:
        # The first proposer answer trickles in (headers one byte a second): the run is still
        # proposing, never finished, when its embeddings reach the cache (buffered: within
        # the cache's flush interval) and the driver is stopped.
        llm.deliver_next(Delivery(drip_s=1.0, drip_headers=True))
        first = submit(
            cluster,
            "jobs/describe.py",
            [
                *manifest_args(
                    manifest, tmp_path / "run1", llm.base_url, num_blocks=40, num_actors=1
                ),
                f"cache.root={cache}",
            ],
        )
        deadline = time.monotonic() + 180
        while not any(cache.rglob("*.parquet")):
            status = cluster.job_client().get_job_status(first)
            assert not status.is_terminal(), (
                f"job ended ({status}) before writing to the cache:\n{job_logs(cluster, first)}"
            )
            assert time.monotonic() < deadline, "no cache file written"
            time.sleep(0.2)
        assert cluster.job_client().stop_job(first)
        assert wait_for_job(cluster, first, 60) == "STOPPED"
        assert not (tmp_path / "run1" / "ranked.json").exists(), "the job finished before the stop"

        # The rerun's two CLIP model actors spread over both nodes.
        rerun = submit(
            cluster,
            "jobs/describe.py",
            [
                *manifest_args(
                    manifest, tmp_path / "run2", llm.base_url, num_blocks=40, num_actors=2
                ),
                f"cache.root={cache}",
            ],
        )
        logs = assert_succeeded(cluster, rerun)
    assert "[visdiff" in logs and "Top hypotheses" in logs
    stats = assert_complete(tmp_path / "run2", 100)
    assert stats["cache"]["hits"] > 0, stats["cache"]
    assert stats["cache"]["hits"] + stats["cache"]["misses"] == 200, stats["cache"]
    # Where the model actors ran, from the cluster's state API (outside the job).
    workers = [a for a in stage_actors(cluster, ray_job_id(cluster, rerun)) if a.node_id]
    placement = sorted((a.class_name, a.node_id[:8]) for a in workers)
    clip_nodes = {a.node_id for a in workers if a.class_name == "ClipModelActor"}
    assert clip_nodes == {cluster.head.node_id, cluster.workers[-1].node_id}, placement
