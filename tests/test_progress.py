"""Progress of the image stages: the pure formatting and rates, the reporter on a fake clock,
and `materialize_with_progress` on real Ray Datasets (rows, shards, slices, re-reads)."""

from __future__ import annotations

import pytest

from visdiff.pipeline.progress import (
    Expected,
    ProgressReporter,
    RecentRate,
    eta_seconds,
    expected_images,
    expecting,
    format_duration,
    format_rate,
    line_interval_s,
    materialize_with_progress,
    progress_line,
    quiet_ray_data,
    summary_line,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0:00"), (7.4, "0:07"), (750, "12:30"), (3723, "1:02:03")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("rate", "text"),
    [(None, "-- img/s"), (0.0, "-- img/s"), (3.44, "3.4 img/s"), (812.4, "812 img/s")],
)
def test_format_rate(rate, text):
    assert format_rate(rate) == text
    assert format_rate(1234.0) == "1,234 img/s"


def test_eta_is_remaining_over_rate_or_unknown():
    assert eta_seconds(250, 1000, 50.0) == 15.0
    assert eta_seconds(1200, 1000, 50.0) == 0.0  # past an upper bound: nothing left, not < 0
    assert eta_seconds(10, None, 50.0) is None
    assert eta_seconds(10, 100, None) is None and eta_seconds(10, 100, 0.0) is None


def test_progress_line_with_a_known_image_total():
    line = progress_line(
        "decode+embed", Expected(images=10_000), images=4_096, elapsed_s=65, image_rate=812.0
    )
    assert line == ("decode+embed: 4,096/10,000 images (41%) | 812 img/s | elapsed 1:05 | ETA 0:07")


def test_progress_line_with_shards_and_without_a_total():
    line = progress_line(
        "decode+embed",
        Expected(shards=40),
        images=3_072,
        elapsed_s=20,
        image_rate=150.0,
        shards_done=12,
        shard_rate=0.5,
    )
    assert line == (
        "decode+embed: 12/40 shards (30%) | 3,072 images | 150 img/s | elapsed 0:20 | ETA 0:56"
    )
    unknown = progress_line("x", Expected(), images=500, elapsed_s=5, image_rate=None)
    assert unknown == "x: 500 images | -- img/s | elapsed 0:05"
    capped = progress_line(
        "x", Expected(images=200, upper_bound=True), images=50, elapsed_s=5, image_rate=10.0
    )
    assert capped.startswith("x: 50/up to 200 images (25%)") and capped.endswith("ETA 0:15")


def test_summary_line_separates_start_up_from_throughput():
    assert summary_line("caption", 32, 20.0) == "caption: done, 32 images in 20.0 s (1.6 img/s)"
    line = summary_line("e", 10_000, 61.2, startup_s=7.1, running_rate=185.3)
    assert line == "e: done, 10,000 images in 61.2 s (163 img/s; 185 img/s after 7.1 s start-up)"


def test_plain_lines_thin_out_on_long_runs():
    assert line_interval_s(0) == 10 and line_interval_s(300) == 30 and line_interval_s(1e5) == 60


def test_recent_rate_forgets_the_slow_start():
    rate = RecentRate(window_s=10)
    assert rate.rate() is None
    rate.add(0, 0)
    rate.add(60, 10)  # one slow minute of start-up ...
    for t in range(61, 100):
        rate.add(t, 10 + 100 * (t - 60))  # ... then 100 per second
    assert rate.rate() == pytest.approx(100.0)


def test_expected_images_from_the_plan():
    assert expected_images([(5000, 0), (3000, 0)], cap=5000) == Expected(images=8000)
    assert expected_images([(None, 40), (None, 10)], cap=0) == Expected(shards=50)
    capped = expected_images([(None, 40), (1200, 0)], cap=5000)
    assert capped == Expected(images=6200, upper_bound=True)
    assert expected_images([(None, 40), (1200, 0)], cap=0) == Expected()  # count + rate only


def test_reporter_plain_lines_rate_and_summary_on_a_fake_clock():
    clock, lines = FakeClock(), []
    reporter = ProgressReporter(
        "decode+embed", Expected(images=1000), emit=lines.append, clock=clock, bar=False
    )
    clock.now += 30  # start-up: actors and models load, nothing arrives
    for _ in range(10):
        reporter.advance(100)  # a block of 100 rows every 2 s
        clock.now += 2
    assert reporter.images == 1000
    # Lines at most every 10 s: at the first arrival (30 s in) and 10 s later, not per block.
    assert lines == [
        "decode+embed: 100/1,000 images (10%) | -- img/s | elapsed 0:30",
        "decode+embed: 600/1,000 images (60%) | 50.0 img/s | elapsed 0:40 | ETA 0:08",
    ]
    summary = reporter.close()
    assert (
        lines[-1]
        == summary
        == (
            "decode+embed: done, 1,000 images in 50.0 s (20.0 img/s; 50.0 img/s after 30.0 s start-up)"
        )
    )


def test_a_failed_stage_says_where_it_stopped_not_done():
    clock, lines = FakeClock(), []
    reporter = ProgressReporter(
        "caption", Expected(images=64), emit=lines.append, clock=clock, bar=False
    )
    reporter.advance(16)
    clock.now += 3
    assert reporter.close(failed=True) == "caption: stopped after 16 images, 3.0 s" == lines[-1]


def test_reporter_draws_a_tqdm_bar_on_a_terminal(capsys):
    lines = []
    reporter = ProgressReporter("caption", Expected(images=64), emit=lines.append, bar=True)
    for _ in range(4):
        reporter.advance(16)
    reporter.close()
    err = capsys.readouterr().err
    assert "caption" in err and "64/64" in err and "100%" in err
    assert len(lines) == 1 and lines[0].startswith("caption: done, 64 images")  # no live lines


def _collecting(stage_lines: list[str]) -> dict:
    return {"emit": stage_lines.append, "bar": False, "interval": lambda elapsed: 0.0}


def test_materialize_with_progress_counts_every_row_and_reads_twice(ray_session):
    import ray.data
    from ray.data.dataset import MaterializedDataset

    lines: list[str] = []
    ds = ray.data.from_items([{"x": i} for i in range(300)], override_num_blocks=12)
    ds = ds.map_batches(lambda b: {"x": b["x"] * 2}, batch_size=25)
    out = materialize_with_progress(ds, "double", Expected(images=300), **_collecting(lines))
    assert isinstance(out, MaterializedDataset)
    assert out.count() == 300
    total = sum(r["x"] for r in out.iter_rows())
    assert total == sum(r["x"] for r in out.iter_rows()) == 2 * sum(range(300))  # not consumed
    live = [line for line in lines if "done" not in line]
    done = [int(line.split(" ")[1].split("/")[0].replace(",", "")) for line in live]
    assert done == sorted(done) and done[-1] == 300 and "/300 images" in live[-1]
    assert lines[-1].startswith("double: done, 300 images in ")


def test_a_timed_stage_records_its_first_output_on_its_own_thread(ray_session):
    import threading
    import time

    import ray.data

    from visdiff.timing import StageTimer, note_first_output

    timer = StageTimer()
    note_first_output()  # outside any timed stage: nothing to record
    with timer("outer"):
        time.sleep(0.05)
        with timer("stream"):
            ds = ray.data.from_items([{"x": i} for i in range(20)], override_num_blocks=4)
            materialize_with_progress(ds, "stream", bar=False, emit=lambda line: None)
        note_first_output()  # "outer" produced something after 0.05 s
        other = threading.Thread(target=note_first_output)  # another thread: not this stage
        other.start()
        other.join()
    firsts, seconds = timer.first_output(), timer.as_dict()
    assert set(firsts) == {"outer", "stream"}
    assert 0 < firsts["stream"] <= seconds["stream"]
    assert 0.05 <= firsts["outer"] <= seconds["outer"]


def test_materialize_with_progress_counts_shards_and_respects_limits(ray_session):
    import ray.data

    def expand(batch):  # like the shard reader: each shard yields two chunks of 10 rows
        for chunk in range(2):
            yield {"x": [int(s) * 100 + chunk for s in batch["shard"] for _ in range(10)]}

    shards = ray.data.from_items([{"shard": i} for i in range(6)], override_num_blocks=6)
    rows = shards.map_batches(expand, batch_size=1)
    lines: list[str] = []
    out = materialize_with_progress(rows, "read", Expected(shards=6), **_collecting(lines))
    assert out.count() == 120
    live = [line for line in lines if "done" not in line]
    assert live[-1].startswith("read: 6/6 shards (100%) | 120 images")

    limited = materialize_with_progress(rows.limit(25), "cap", bar=False)  # sliced blocks
    assert limited.count() == 25 and len(limited.take_all()) == 25


def test_the_plan_reaches_the_stage_through_expecting(ray_session):
    import ray.data

    lines: list[str] = []
    ds = ray.data.range(40, override_num_blocks=4)
    with expecting("stage", Expected(images=40)):
        materialize_with_progress(ds.map_batches(lambda b: b), "stage", **_collecting(lines))
    assert any("40/40 images" in line for line in lines)
    after: list[str] = []  # outside the block the stage's total is unknown again
    materialize_with_progress(ds.map_batches(lambda b: b), "stage", **_collecting(after))
    assert after[-2].startswith("stage: 40 images | ") and "/" not in after[-2].split("|")[0]


def test_quiet_ray_data_turns_ray_bars_off_unless_verbose():
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.print_on_execution_start)
    try:
        quiet_ray_data(verbose=False)
        assert not context.enable_progress_bars and not context.print_on_execution_start
        quiet_ray_data(verbose=True)
        assert context.enable_progress_bars and context.print_on_execution_start
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
