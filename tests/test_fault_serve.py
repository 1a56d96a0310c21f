"""Fault test (issue #11): the Serve LLM replica is killed while the proposer's requests are in it.

What happens (measured; the row of the issue's fault table): the killed replica's requests get
HTTP 500 from Serve's proxy at once; the openai SDK retries; a retry waits in the proxy's queue
(no replica) until Serve's controller has noticed the death (its health check, every 2 s:
visdiff.serving.args.HEALTH_CHECK_PERIOD_S) and started a new replica, and is answered there.
So the run completes when the new replica is up before the client's last attempt ends, about
2 x llm.timeout_s after the kill (3 attempts in all); with the default 300 s that is ten minutes.
Else it fails with exit 5 within 3 x llm.timeout_s. Which of the two a small llm.timeout_s gives
is a race with the replacement's start-up, so the test pins the one that holds: a budget (2 x 60 s) far above the replacement time (5-35 s here, quiet or
busy 2-core machine).

Deterministic kill: after the run logs "proposing:" (the launcher's own identity checks are
over), the replica is polled for requests in flight (ReplicaActor.get_num_ongoing_requests, a Ray
Serve internal: if a Ray upgrade drops it, this test fails loudly) and killed only once one is
inside it. The run then proves the answers came from the successor replica.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest

from visdiff.cli import main

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
APP = "visdiff-llm-fault"
TIMEOUT_S = 60.0
ATTEMPTS = 3  # the first try + the client's max_retries (2)
BACKOFF_S = 3.0  # the SDK's waits between attempts (0.5 s, 1 s, with jitter), rounded up
REPLICA_PREFIX = f"SERVE_REPLICA::{APP}#"


class _ProgressLines(logging.Handler):
    """The run's progress lines with their times; `proposing` is set once proposing starts."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.proposing = threading.Event()
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append((time.monotonic(), line))
        if line.startswith("proposing:"):
            self.proposing.set()

    def first(self, prefix: str) -> float | None:
        return next((t for t, line in self.lines if line.startswith(prefix)), None)


def _replica_names() -> list[str]:
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["name"].startswith(REPLICA_PREFIX))


class ReplicaKiller(threading.Thread):
    """Kills this app's one replica while it holds a request, then watches for its successor."""

    def __init__(self, proposing: threading.Event, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.proposing, self.done = proposing, done
        self.killed: str | None = None
        self.in_flight = 0
        self.killed_at: float | None = None
        self.replaced_by: str | None = None
        self.replaced_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._kill_then_watch()
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    def _kill_then_watch(self) -> None:
        import ray

        while not self.proposing.wait(0.1):
            if self.done.is_set():
                return
        (name,) = _replica_names()
        replica = ray.get_actor(name, namespace="serve")
        while not self.done.is_set():
            # ReplicaActor's own count of the requests it is executing (or has reserved).
            in_flight = ray.get(replica.get_num_ongoing_requests.remote(), timeout=30)
            if in_flight > 0:
                ray.kill(replica, no_restart=False)
                self.killed, self.in_flight = name, in_flight
                self.killed_at = time.monotonic()
                break
            time.sleep(0.02)
        while self.killed and not self.done.is_set():
            successors = [n for n in _replica_names() if n != self.killed]
            if successors:
                self.replaced_by, self.replaced_at = successors[0], time.monotonic()
                return
            time.sleep(0.2)


def test_replica_killed_mid_request_is_replaced_and_the_run_completes(
    ray_session, examples_dir, serve_http_port, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    argv = [
        "describe",
        "--config",
        str(REPO / "configs" / "examples_manifest.yaml"),
        f"data.manifest={examples_dir / 'manifest.csv'}",
        f"output_dir={run_dir}",
        "caption.source=manifest",
        "data.max_num_samples=12",
        "llm.backend=serve",
        f"llm.http_port={serve_http_port}",
        f"llm.app_name={APP}",
        f"llm.route_prefix=/{APP}",
        f"llm.timeout_s={TIMEOUT_S:g}",
        "propose.num_rounds=2",
        "propose.num_samples=4",
        "evaluate.evaluator=none",
    ]
    watch = _ProgressLines()
    done = threading.Event()
    killer = ReplicaKiller(watch.proposing, done)
    log = logging.getLogger("visdiff")
    log.addHandler(watch)
    level = log.level
    log.setLevel(logging.INFO)
    started = time.monotonic()
    try:
        killer.start()
        code = main(argv)
    finally:
        ended = time.monotonic()
        done.set()
        killer.join(timeout=30)
        log.removeHandler(watch)
        log.setLevel(level)
    printed = capsys.readouterr()

    assert killer.error is None, repr(killer.error)
    assert killer.killed is not None, "no request was seen in the replica: nothing was killed"
    assert killer.in_flight >= 1
    assert code == 0, printed.err
    assert killer.replaced_by is not None, "Serve did not start a new replica"
    # Bounded by the client's budget (every attempt ends within llm.timeout_s), plus ranking,
    # writing the folder and deleting the app (15 s: 7.5 s was seen for serve.delete alone).
    assert killer.killed_at is not None
    after_kill = ended - killer.killed_at
    assert after_kill <= ATTEMPTS * TIMEOUT_S + BACKOFF_S + 15

    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete"
    for name in status["files"]:
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "ranked.json").read_text())
    rounds = [json.loads(line) for line in (run_dir / "hypotheses.jsonl").read_text().splitlines()]
    assert {r["round"] for r in rounds} == {0, 1}
    stats = json.loads((run_dir / "stats.json").read_text())
    # Retries happen inside a call (the SDK's): two rounds are two calls, none failed.
    assert stats["llm_usage"]["calls"] == 2 and stats["llm_usage"]["failed"] == 0

    # The answers came from the successor: after it existed, seconds after the kill (had the
    # killed replica answered first, its answers would precede its own replacement).
    assert killer.replaced_at is not None
    answered_at = watch.first("round ")  # "round <i>: <n> hypotheses", one per answer
    assert answered_at is not None and answered_at > killer.replaced_at
    print(
        f"killed {killer.killed} with {killer.in_flight} request(s) in it; replaced after "
        f"{killer.replaced_at - killer.killed_at:.1f} s, answered after "
        f"{answered_at - killer.killed_at:.1f} s; run exited {after_kill:.1f} s after "
        f"the kill ({ended - started:.1f} s in all), status complete"
    )
