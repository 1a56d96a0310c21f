"""A real multi-node Ray cluster on loopback for tests: one head node and worker nodes, each a
`ray start --block` subprocess with its own node id, stopped by process id.

Why not `ray stop`: it kills every Ray on the machine, including the session's in-process Ray
that other tests share. Here every port is chosen free and the head has its own temp dir, so
this cluster and a `ray.init()` in the test process coexist and never find each other.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 90.0


def _psutil() -> Any:
    """psutil as shipped inside Ray (ray/thirdparty_files, put on sys.path by `import ray`)."""
    import importlib

    import ray  # noqa: F401

    return importlib.import_module("psutil")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before in this process (the OS may otherwise give
    the same just-closed port twice, and Ray refuses two components on one port)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT and not 10002 <= port <= 19999:  # Ray's worker port range
            _HANDED_OUT.add(port)
            return port


def node_env(token: str) -> dict[str, str]:
    """The test process's environment (AWS_* from conftest included), offline hubs, the venv
    first on PATH so that a job's `python` is this interpreter, no inherited RAY_ADDRESS, and
    token authentication with this cluster's own token (Ray's default mode; the token given in
    the environment wins over ~/.ray/auth_token, which other Rays on this machine use)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        RAY_DEDUP_LOGS="0",
        RAY_USAGE_STATS_ENABLED="0",
        # Tests stop nodes on purpose: no 30 s drain wait on SIGTERM.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        # ... and kill them: the GCS declares a silent node dead after 3 missed 1 s health
        # checks instead of Ray's default 5 x 3 s (each check still waits up to 10 s).
        RAY_health_check_period_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def _own_ports() -> list[str]:
    """Per-node ports that default to fixed numbers (and so would clash between two nodes or
    with another Ray on this machine)."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


@dataclass
class RayNode:
    """One `ray start --block` process and everything it spawned."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    node_id: str | None = None
    pids: set[int] = field(default_factory=set)  # every descendant seen so far

    def descendants(self) -> list[Any]:
        psutil = _psutil()
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            found = []
        self.pids.update(p.pid for p in found)
        return found

    def raylet_pids(self) -> list[int]:
        psutil = _psutil()
        out = []
        for p in self.descendants():
            try:
                if "raylet" in p.name():
                    out.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def alive_pids(self) -> list[int]:
        """Processes of this node (the `ray start` process and all descendants ever seen) that
        are still running; zombies count as gone."""
        psutil = _psutil()
        alive = []
        for pid in {self.proc.pid, *self.pids}:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    def kill(self) -> None:
        """Crash the node: SIGKILL the raylet, its workers and the `ray start` process at once."""
        psutil = _psutil()
        victims = [*self.descendants()]
        try:
            victims.append(psutil.Process(self.proc.pid))
        except psutil.NoSuchProcess:
            pass
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=10)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop (SIGTERM: `ray start --block` tears its processes down), then SIGKILL
        whatever of this node is left."""
        psutil = _psutil()
        self.descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while self.alive_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self.alive_pids():
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class LocalCluster:
    """Head node + worker nodes on 127.0.0.1; `dashboard_url` is where jobs are submitted."""

    def __init__(self, root: Path | None = None) -> None:
        # Short path: Ray's unix sockets live below the temp dir (107-byte limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="vdray-", dir="/tmp"))
        self.log_dir = Path(root) if root else self.temp_dir
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.client_port = free_port()
        self.token = secrets.token_hex(32)
        self.head: RayNode | None = None
        self.workers: list[RayNode] = []

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def env(self) -> dict[str, str]:
        """Environment for a process that joins this cluster (nodes, `serve run`, CLIs)."""
        return node_env(self.token)

    def job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.auth_headers)

    def state_client(self):
        """State API over the dashboard's REST endpoint, with this cluster's token (the module
        level `ray.util.state.list_*` take the token from the calling process's Ray mode)."""
        from ray.util.state import StateApiClient

        return StateApiClient(address=self.dashboard_url, headers=self.auth_headers)

    def list_state(self, resource: str, filters: list[tuple[str, str, str]] | None = None):
        """`list_actors`/`list_tasks`/... equivalents: resource is "actors", "tasks", "nodes"."""
        from ray.util.state.common import ListApiOptions, StateResource

        options = ListApiOptions(limit=10_000, timeout=20, filters=filters or [], detail=True)
        return self.state_client().list(
            StateResource(resource), options, raise_on_missing_output=False
        )

    def _spawn(self, name: str, args: list[str]) -> RayNode:
        log_path = self.log_dir / f"{name}.log"
        ray_bin = str(Path(sys.executable).with_name("ray"))
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [ray_bin, "start", "--block", "--disable-usage-stats", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,  # a Ctrl-C in pytest must not reach the nodes directly
            )
        return RayNode(name, proc, log_path)

    def start_head(self, *, num_cpus: int, resources: dict[str, float] | None = None) -> RayNode:
        self.head = self._spawn(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_port}",
                f"--num-cpus={num_cpus}",
                f"--resources={json.dumps(resources or {'head': 1})}",
                f"--temp-dir={self.temp_dir}",
                *_own_ports(),
            ],
        )
        self.wait_for_nodes(1)
        return self.head

    def add_worker(
        self, *, num_cpus: int, resources: dict[str, float] | None = None, wait: bool = True
    ) -> RayNode:
        name = f"worker{len(self.workers) + 1}"
        # Its own temp dir, like a separate machine's disk: nodes that share the head's session
        # dir also share runtime_env's unpacked working_dir, and one node's runtime-env agent
        # then deletes the folder that another node's workers run in.
        temp_dir = self.temp_dir / f"w{len(self.workers) + 1}"
        node = self._spawn(
            name,
            [
                f"--address={self.gcs_address}",
                f"--temp-dir={temp_dir}",
                f"--num-cpus={num_cpus}",
                f"--resources={json.dumps(resources or {'worker': 1})}",
                *_own_ports(),
            ],
        )
        before = {n["node_id"] for n in self.alive_nodes()}
        self.workers.append(node)
        if wait:
            nodes = self.wait_for_nodes(len(before) + 1)
            new = [n["node_id"] for n in nodes if n["node_id"] not in before]
            node.node_id = new[0] if len(new) == 1 else None
        return node

    def _check_running(self) -> None:
        for node in [self.head, *self.workers]:
            if node is not None and node.proc.poll() not in (None,) and node.node_id is None:
                log = node.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray start for {node.name} exited:\n{log}")

    def alive_nodes(self) -> list[dict]:
        """ALIVE nodes from the dashboard's REST API (state API: node_id, resources_total)."""
        try:
            nodes = self.list_state("nodes", [("state", "=", "ALIVE")])
        except Exception:  # dashboard not up yet
            return []
        return [{"node_id": n.node_id, "resources": n.resources_total} for n in nodes]

    def wait_for_nodes(self, count: int, timeout_s: float = START_TIMEOUT_S) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.alive_nodes()
            if len(nodes) >= count:
                if self.head is not None and self.head.node_id is None:
                    heads = [n for n in nodes if "head" in n["resources"]]
                    self.head.node_id = heads[0]["node_id"] if heads else None
                return nodes
            self._check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} of {count} Ray nodes alive after {timeout_s} s")
            time.sleep(0.5)

    def wait_for_node_dead(self, node_id: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(n["node_id"] == node_id for n in self.alive_nodes()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node_id} still ALIVE after {timeout_s} s")
            time.sleep(0.5)

    def leftover_pids(self) -> list[int]:
        return [pid for node in [self.head, *self.workers] if node for pid in node.alive_pids()]

    def shutdown(self) -> None:
        """Workers first, then the head; only the processes this object started."""
        for node in reversed(self.workers):
            node.stop()
        if self.head is not None:
            self.head.stop()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
