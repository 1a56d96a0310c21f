"""Progress of the image stages (decode + embed, caption): images done / total (or shards done /
total when a shard input's image count is unknown), images per second and ETA, then a one-line
summary per stage.

Rows are counted on the driver as Ray Data hands over the stage's output blocks, so the stages
themselves know nothing about progress. On a terminal the live line is a tqdm bar on stderr;
anywhere else (a pipe, `ray job logs`) it is a plain log line every few seconds, so that a log
file stays readable. Formatting and rates are pure functions, and `ProgressReporter` takes its
clock and output as arguments: both are tested without Ray.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RATE_WINDOW_S = 30.0  # the live rate and ETA use the last 30 s, so a slow start fades out
MIN_LINE_INTERVAL_S = 10.0  # plain mode: at most one line per 10 s ...
MAX_LINE_INTERVAL_S = 60.0  # ... and at least one per minute; in between, ~10% of the elapsed time


@dataclass(frozen=True)
class Expected:
    """What a stage will produce, as far as the driver knows before it runs."""

    images: int | None = None  # rows the stage will output, when known
    upper_bound: bool = False  # `images` is a cap (shard input with data.max_num_samples)
    shards: int | None = None  # shards to read, for shard inputs whose image count is unknown

    @property
    def unit(self) -> str:
        return "shards" if self.images is None and self.shards else "images"

    @property
    def total(self) -> int | None:
        return self.images if self.images is not None else self.shards


def expected_images(sets: list[tuple[int | None, int]], cap: int) -> Expected:
    """What the embedding stage will output, from the plan. `sets`: per set, (its image count
    when known, its number of shards); `cap` is data.max_num_samples (0 = no cap)."""
    counts = [n for n, _ in sets]
    if all(n is not None for n in counts):
        return Expected(images=sum(n for n in counts if n is not None))
    if cap > 0:  # shard sets are cut at `cap` images each, unless they hold fewer
        return Expected(images=sum(cap if n is None else n for n in counts), upper_bound=True)
    if all(n is None for n in counts):
        return Expected(shards=sum(shards for _, shards in sets))
    return Expected()  # a listed set beside uncapped shards: count and rate, no total


# ------------------------------------------------------------------------ pure formatting


def format_count(n: int) -> str:
    return f"{n:,}"


def format_duration(seconds: float) -> str:
    """`0:07`, `12:30`, `1:02:03`: the form tqdm and img2dataset users read at a glance."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(per_second: float | None) -> str:
    if per_second is None or per_second <= 0:
        return "-- img/s"
    if per_second >= 100:
        return f"{per_second:,.0f} img/s"
    return f"{per_second:.1f} img/s"


def eta_seconds(done: float, total: float | None, rate: float | None) -> float | None:
    """Seconds left at `rate` (units per second), or None when unknowable."""
    if total is None or rate is None or rate <= 0:
        return None
    return max(0.0, (total - done) / rate)


def progress_line(
    stage: str,
    expected: Expected,
    *,
    images: int,
    elapsed_s: float,
    image_rate: float | None,
    shards_done: int | None = None,
    shard_rate: float | None = None,
) -> str:
    """One live progress line (plain mode), e.g.
    `embed: 4,096/10,000 images (41%) | 812 img/s | elapsed 0:05 | ETA 0:07`."""
    parts: list[str]
    if expected.unit == "shards" and expected.shards:
        done = shards_done or 0
        parts = [
            f"{done:,}/{expected.shards:,} shards ({100 * done / expected.shards:.0f}%)",
            f"{format_count(images)} images",
        ]
        eta = eta_seconds(done, expected.shards, shard_rate)
    elif expected.images:
        bound = "up to " if expected.upper_bound else ""
        share = min(100.0, 100 * images / expected.images)
        parts = [
            f"{format_count(images)}/{bound}{format_count(expected.images)} images ({share:.0f}%)"
        ]
        eta = eta_seconds(images, expected.images, image_rate)
    else:
        parts = [f"{format_count(images)} images"]
        eta = None
    parts += [format_rate(image_rate), f"elapsed {format_duration(elapsed_s)}"]
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return f"{stage}: " + " | ".join(parts)


def summary_line(
    stage: str,
    images: int,
    seconds: float,
    *,
    startup_s: float | None = None,
    running_rate: float | None = None,
) -> str:
    """The closing line of a stage, e.g. `embed: done, 10,000 images in 61.2 s (163 img/s;
    185 img/s after 7.1 s start-up)`: the overall rate, and the rate once rows flowed."""
    rate = images / seconds if seconds > 0 else None
    detail = format_rate(rate)
    if startup_s is not None and running_rate is not None:
        detail += f"; {format_rate(running_rate)} after {startup_s:.1f} s start-up"
    return f"{stage}: done, {format_count(images)} images in {seconds:.1f} s ({detail})"


def line_interval_s(elapsed_s: float) -> float:
    """Plain mode: lines come often at first and thin out on long runs (a log stays short)."""
    return min(MAX_LINE_INTERVAL_S, max(MIN_LINE_INTERVAL_S, elapsed_s / 10))


class RecentRate:
    """Units per second over the last `window_s` seconds of (time, cumulative count) samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, count: float) -> None:
        self._samples.append((now, count))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None


# ------------------------------------------------------------------------ the reporter


class ProgressReporter:
    """Counts a stage's output rows (and, for shard inputs, shards read) and shows progress.

    `bar=None` picks a tqdm bar when stderr is a terminal and plain lines through `emit`
    otherwise. Call `advance` as rows arrive and `close` once at the end (it returns and emits
    the summary line)."""

    def __init__(
        self,
        stage: str,
        expected: Expected | None = None,
        *,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        bar: bool | None = None,
        interval: Callable[[float], float] = line_interval_s,
    ) -> None:
        self.stage = stage
        self.expected = expected or Expected()
        self.images = 0
        self.shards_done: int | None = None
        self._emit = emit or log.info
        self._clock = clock
        self._interval = interval
        self._started = clock()
        self._last_line = self._started
        # Rates start at the first arrival: start-up (actors, model loads) is not throughput.
        self._image_rate = RecentRate()
        self._shard_rate = RecentRate()
        self._first: tuple[float, int] | None = None  # (time, images) of the first arrival
        self._last_arrival = self._started
        use_bar = sys.stderr.isatty() if bar is None else bar
        self._bar = self._make_bar() if use_bar else None

    def _make_bar(self) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=self.expected.total,
            desc=self.stage,
            unit=" shard" if self.expected.unit == "shards" else " img",
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.1,
            leave=True,
        )

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def advance(self, images: int, *, shards_done: int | None = None) -> None:
        """`images` more rows arrived; `shards_done` is the running count of shards read."""
        now = self._clock()
        self.images += images
        self._last_arrival = now
        if self._first is None:
            self._first = (now, self.images)
        self._image_rate.add(now, self.images)
        previous_shards = self.shards_done or 0
        if shards_done is not None:
            self.shards_done = shards_done
            self._shard_rate.add(now, shards_done)
        if self._bar is not None:
            if self.expected.unit == "shards":
                self._bar.update(max(0, (self.shards_done or 0) - previous_shards))
                self._bar.set_postfix_str(f"{format_count(self.images)} images", refresh=False)
            else:
                self._bar.update(images)
            return
        if now - self._last_line >= self._interval(now - self._started):
            self._last_line = now
            self._emit(self.line())

    def line(self) -> str:
        return progress_line(
            self.stage,
            self.expected,
            images=self.images,
            elapsed_s=self.elapsed_s,
            image_rate=self._image_rate.rate(),
            shards_done=self.shards_done,
            shard_rate=self._shard_rate.rate(),
        )

    def close(self, *, failed: bool = False) -> str:
        """Emit and return the stage's last line: the summary, or where it stopped."""
        if self._bar is not None:
            self._bar.close()
        if failed:
            stopped = f"{self.stage}: stopped after {format_count(self.images)} images, "
            stopped += f"{self.elapsed_s:.1f} s"
            self._emit(stopped)
            return stopped
        startup_s = running_rate = None
        if self._first is not None and self._last_arrival > self._first[0]:
            startup_s = self._first[0] - self._started
            running_rate = (self.images - self._first[1]) / (self._last_arrival - self._first[0])
        summary = summary_line(
            self.stage, self.images, self.elapsed_s, startup_s=startup_s, running_rate=running_rate
        )
        self._emit(summary)
        return summary


# ------------------------------------------------------------------------ Ray Data side

_expected: ContextVar[dict[str, Expected] | None] = ContextVar("visdiff_expected", default=None)


@contextmanager
def expecting(stage: str, expected: Expected) -> Iterator[None]:
    """Tell `materialize_with_progress(ds, stage)`, further down this thread's call stack, what
    the stage will produce (the pipeline knows the plan; the library function does not)."""
    current = dict(_expected.get() or {})
    current[stage] = expected
    token = _expected.set(current)
    try:
        yield
    finally:
        _expected.reset(token)


def expected_for(stage: str) -> Expected:
    return (_expected.get() or {}).get(stage, Expected())


def materialize_with_progress(
    ds: Any, stage: str, expected: Expected | None = None, **reporter_options: Any
) -> Any:
    """`ds.materialize()` that reports progress while Ray Data streams the output blocks.

    The same as Ray's own `Dataset.materialize` (Ray 2.60): execute, keep every output block
    referenced, and wrap the blocks in a MaterializedDataset that does not own them (so it can
    be read more than once); only here each bundle's row count is reported as it arrives."""
    from ray.data._internal.execution.interfaces import RefBundle
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators import InputData
    from ray.data.dataset import MaterializedDataset

    from visdiff.timing import note_first_output

    reporter = ProgressReporter(stage, expected or expected_for(stage), **reporter_options)
    bundles_iter, stats, executor = ds._execute_to_iterator(capture_executor=False)
    kept = []
    try:
        for bundle in bundles_iter:
            if not kept:
                note_first_output()  # the stage's start-up ends here (stats.json)
            kept.append(
                RefBundle(
                    blocks=bundle.blocks,
                    schema=bundle.schema,
                    owns_blocks=False,
                    slices=bundle.slices,
                )
            )
            shards = source_blocks_done(executor) if reporter.expected.unit == "shards" else None
            reporter.advance(bundle.num_rows() or 0, shards_done=shards)
        if reporter.expected.unit == "shards":  # a shard's last task finishes after its rows
            reporter.advance(0, shards_done=source_blocks_done(executor))
    except BaseException:
        reporter.close(failed=True)
        raise
    reporter.close()
    # Unlike materialize(), no `_execute()` here: over in-memory input blocks it would only run
    # Ray's "no CPUs available" check, which misfires while other stages' actors hold the CPUs.
    plan = LogicalPlan(InputData(input_data=kept), ds.context)
    return MaterializedDataset(plan, ds.context, stats)


def source_blocks_done(executor: Any) -> int | None:
    """Input blocks finished by the operators that read the dataset's sources. Shard datasets
    hold one input row (and block) per shard, so for them this is the number of shards read.
    None when the executor does not expose it (a cache hit, another Ray version)."""
    from ray.data._internal.execution.operators.input_data_buffer import InputDataBuffer

    try:
        topology = executor._topology
        return sum(
            op.metrics.num_task_inputs_processed
            for op in topology
            if any(isinstance(dep, InputDataBuffer) for dep in op.input_dependencies)
        )
    except AttributeError:
        return None


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data's own per-operator bars and execution banners, only with `--verbose`: our
    progress lines say what a user needs, and Ray's bars flood `ray job logs`."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # ... including the warning that says the bars are off: that is what was asked for.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
