"""Killing a Serve LLM replica while the proposer's requests are in it (issue #11's fault test,
run inside tests/test_describe_e2e.py's tiny describe so that it costs no describe of its own).

What happens (measured; the row of the issue's fault table): the killed replica's requests get
HTTP 500 from Serve's proxy at once; the openai SDK retries; a retry waits in the proxy's queue
(no replica) until Serve's controller has noticed the death (its health check, every 2 s:
visdiff.serving.args.HEALTH_CHECK_PERIOD_S) and started a new replica, and is answered there.
So the run completes when the new replica is up before the client's last attempt ends, about
2 x llm.timeout_s after the kill (3 attempts in all); with the default 300 s that is ten minutes.
Else it fails with exit 5 within 3 x llm.timeout_s. Which of the two a small llm.timeout_s gives
is a race with the replacement's start-up, so the test pins the one that holds: a budget
(2 x 60 s) far above the replacement time (5-35 s here, quiet or busy 2-core machine).

Deterministic kill: after the run logs "proposing:" (the launcher's own identity checks are
over), the replica is polled for requests in flight (ReplicaActor.get_num_ongoing_requests, a Ray
Serve internal: if a Ray upgrade drops it, the test fails loudly) and killed only once one is
inside it. The test then proves the answers came from the successor replica.
"""

from __future__ import annotations

import logging
import threading
import time

ATTEMPTS = 3  # the first try + the client's max_retries (2)
BACKOFF_S = 3.0  # the SDK's waits between attempts (0.5 s, 1 s, with jitter), rounded up


class ProgressLines(logging.Handler):
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


def replica_names(app: str) -> list[str]:
    """Serve's replica actors of `app` (named "SERVE_REPLICA::<app>#<deployment>#<id>")."""
    import ray

    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in named if a["name"].startswith(f"SERVE_REPLICA::{app}#"))


class ReplicaKiller(threading.Thread):
    """Kills this app's one replica while it holds a request, then watches for its successor."""

    def __init__(self, app: str, proposing: threading.Event, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.app, self.proposing, self.done = app, proposing, done
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
        (name,) = replica_names(self.app)
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
            successors = [n for n in replica_names(self.app) if n != self.killed]
            if successors:
                self.replaced_by, self.replaced_at = successors[0], time.monotonic()
                return
            time.sleep(0.2)


class KillDuring:
    """`with KillDuring(app) as kill: main([...])`: the replica of `app` is killed once the run
    proposes with a request inside it; afterwards `kill.assert_recovered(timeout_s)` checks that
    Serve replaced it, the answers came from the successor and the run ended within the client's
    budget."""

    def __init__(self, app: str) -> None:
        self.watch = ProgressLines()
        self.done = threading.Event()
        self.killer = ReplicaKiller(app, self.watch.proposing, self.done)
        self.ended: float | None = None
        self._log = logging.getLogger("visdiff")
        self._level = self._log.level

    def __enter__(self) -> KillDuring:
        self._log.addHandler(self.watch)
        self._log.setLevel(logging.INFO)
        self.killer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ended = time.monotonic()
        self.done.set()
        self.killer.join(timeout=30)
        self._log.removeHandler(self.watch)
        self._log.setLevel(self._level)

    def assert_recovered(self, timeout_s: float) -> str:
        """The checks of the fault table's row; returns a line saying what happened."""
        killer = self.killer
        assert killer.error is None, repr(killer.error)
        assert killer.killed is not None, "no request was seen in the replica: nothing was killed"
        assert killer.in_flight >= 1 and killer.killed_at is not None
        assert killer.replaced_by is not None, "Serve did not start a new replica"
        # Bounded by the client's budget (every attempt ends within llm.timeout_s), plus the
        # rest of the run after proposing (ranking, judging, writing; 60 s on a busy machine).
        assert self.ended is not None
        after_kill = self.ended - killer.killed_at
        assert after_kill <= ATTEMPTS * timeout_s + BACKOFF_S + 60, after_kill
        # The answers came from the successor: after it existed (had the killed replica answered
        # first, its answers would precede its own replacement).
        assert killer.replaced_at is not None
        answered_at = self.watch.first("round ")  # "round <i>: <n> hypotheses", one per answer
        assert answered_at is not None and answered_at > killer.replaced_at
        return (
            f"killed {killer.killed} with {killer.in_flight} request(s) in it; replaced after "
            f"{killer.replaced_at - killer.killed_at:.1f} s, answered after "
            f"{answered_at - killer.killed_at:.1f} s; the run ended {after_kill:.1f} s after "
            "the kill"
        )
