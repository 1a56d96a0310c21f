"""Wall-clock seconds per stage, recorded in stats.json (stages may overlap in threads), and
each stage's start-up: the seconds from its start to its first output (actor processes, imports
and model loads happen there), noted by whatever produces the output on the stage's thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_active = threading.local()  # per thread: a stack of (timer, stage, started)


class StageTimer:
    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._first_output: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        stack = _active.__dict__.setdefault("stack", [])
        stack.append((self, stage, start))
        try:
            yield
        finally:
            stack.pop()
            elapsed = time.perf_counter() - start
            with self._lock:
                self._seconds[stage] = self._seconds.get(stage, 0.0) + elapsed

    def record(self, stage: str, seconds: float) -> None:
        """A duration measured elsewhere (e.g. starting the LLM app), added under `stage`."""
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {k: round(v, 3) for k, v in self._seconds.items()}

    def first_output(self) -> dict[str, float]:
        """Per stage, the seconds from its (first) start to its first output."""
        with self._lock:
            return {k: round(v, 3) for k, v in self._first_output.items()}

    def _note_first_output(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._first_output.setdefault(stage, seconds)


def note_first_output() -> None:
    """The innermost stage timed on this thread has produced its first output (a no-op outside
    a timed stage). Called by the code that streams a stage's results."""
    stack = getattr(_active, "stack", None)
    if stack:
        timer, stage, started = stack[-1]
        timer._note_first_output(stage, time.perf_counter() - started)
