"""Command line: parse, build the config, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import traceback
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from visdiff.errors import ConfigError, VisdiffError, first_line

if TYPE_CHECKING:  # the CLI imports the rest of visdiff inside `main`'s error handling
    from visdiff.config import DescribeConfig

log = logging.getLogger("visdiff")

# sysexits' EX_SOFTWARE: not a config, input, model or LLM problem but a bug or an unforeseen
# failure (a missing package, a library raising what we did not expect).
UNEXPECTED_EXIT_CODE = 70

DESCRIPTION = """\
Describe, in plain language, how image set A differs from image set B.

visdiff captions samples of both sets, asks an LLM for differences that are more often true of
A than of B, and ranks every candidate with CLIP over all images (AUROC, t-test). A set is a
folder, a group of a manifest (CSV/Parquet/JSONL), or WebDataset/Parquet shards, on disk or
on S3. The same command runs on a laptop (it starts a local Ray) and on a Ray cluster.
"""

EPILOG = """\
examples:
  visdiff demo                        the offline mode (models=offline) on a generated demo set
  visdiff describe data.set_a=photos/cats data.set_b=photos/dogs output_dir=runs/cats
  visdiff describe --config configs/examples_manifest.yaml models=cpu
  visdiff describe data.set_a='s3://bucket/laion/{00000..00099}.tar' \\
      data.set_b=s3://bucket/imagenet/val/ data.max_num_samples=0 models=gpu
  visdiff embed --config my.yaml cache.root=s3://bucket/cache    fill the cache ahead
  visdiff bench ../shared/data/visdiffbench --manifest VisDiffBench.csv --root VisDiff \
      evaluate.evaluator=llm_judge evaluate.llm.backend=external evaluate.llm.base_url=URL
  visdiff keys                        every setting with its default and meaning
  visdiff keys clip.                  only the settings under clip.

settings: key=value pairs (list: `visdiff keys`) win over --config FILE, which wins over the
  model preset (models=tiny|cpu|gpu) and configs/base.yaml.
results: output_dir gets ranked.json, report.html, stats.json and the resolved config.yaml;
  status.json, written last, says complete or failed. A non-empty output_dir is refused
  unless --overwrite is given.
exit codes: 0 done, 2 config error, 3 bad input, 4 model unavailable, 5 LLM failure,
  70 unexpected error (one line on stderr; the full traceback is written to a file it names).
"""

VERBOSE_HELP = "also show Ray Data's own per-operator progress bars and execution logs"
OVERWRITE_HELP = (
    "replace the earlier run in a non-empty output_dir (same as overwrite=true; "
    "visdiff demo always replaces its own run)"
)
OVERRIDES_HELP = "settings, e.g. models=cpu data.max_num_samples=0 (see `visdiff keys`)"


def _version() -> str:
    try:
        return metadata.version("visdiff")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        from visdiff import __version__

        return f"{__version__} (not installed)"


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="visdiff", description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"visdiff {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=formatter,
        )

    describe = add(
        "describe",
        "describe how image set A differs from set B and write a run folder",
        "visdiff describe data.set_a=photos/cats data.set_b=photos/dogs output_dir=runs/cats",
    )
    demo = add(
        "demo",
        "make a small demo dataset and describe it (models=offline: captions, no download)",
        "visdiff demo --root /tmp/visdiff-demo",
    )
    demo.add_argument("--root", type=Path, default=Path("runs/demo"), help="demo data + run folder")
    embed = add(
        "embed",
        "fill the embedding cache (cache.root) for both sets ahead of a describe run",
        "visdiff embed --config my.yaml cache.root=s3://bucket/visdiff-cache",
    )
    for command in (describe, embed):
        command.add_argument(
            "--config", type=Path, metavar="FILE", help="experiment YAML (over configs/base.yaml)"
        )
    for command in (describe, demo, embed):
        command.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
        command.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        command.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    bench = add(
        "bench",
        "run describe on every pair of a suite (VisDiffBench) and report Acc@1 / Acc@5",
        "visdiff bench suite/ --output-dir runs/bench evaluate.evaluator=embedding models=cpu",
    )
    bench.add_argument(
        "suite", help="ground-truth table (.jsonl/.csv: set1, set2, difference) or a folder"
    )
    bench.add_argument(
        "--root", help="folder the suite's relative image paths resolve against (data.root)"
    )
    bench.add_argument(
        "--manifest", help="image manifest of the suite: the paper's CSV (path, group_name)"
    )
    bench.add_argument(
        "--output-dir", default="runs/bench", help="bench folder: pairs/<id>/, results, summary"
    )
    bench.add_argument("--concurrency", type=int, default=2, help="pairs run at once")
    bench.add_argument(
        "--no-resume", action="store_true", help="run finished pairs again (default: skip them)"
    )
    bench.add_argument(
        "--config", type=Path, metavar="FILE", help="experiment YAML applied to every pair"
    )
    bench.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    bench.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    report = add(
        "report",
        "re-render report.html from a run folder's own files",
        "visdiff report runs/cats",
    )
    report.add_argument("run_dir", help="the run folder of a describe run (local or s3://)")
    keys = add(
        "keys",
        "list the settings (config keys) with their defaults and descriptions",
        "visdiff keys data.        (each line works as a key=value override)",
    )
    keys.add_argument("prefix", nargs="?", default="", help="only keys starting with this")
    keys.add_argument(
        "--yaml", action="store_true", help="print a complete, commented base config instead"
    )
    return parser


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted: a caller (a notebook, a test)
    may swap it between runs, and a handler holding the old one would write to a closed file."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _setup_logging() -> None:
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("[visdiff %(asctime)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger("visdiff")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def keys_listing(prefix: str = "") -> list[str]:
    """`key=default  # description` lines: each pastes as an override (or a shell line)."""
    from visdiff.config import key_docs, yaml_value

    docs = [d for d in key_docs() if d.key.startswith(prefix)]
    if not docs:
        sections = sorted({d.key.split(".")[0] for d in key_docs()})
        raise ConfigError(
            f"no config key starts with '{prefix}'; try one of: {', '.join(sections)}"
        )
    assignments = [f"{d.key}={yaml_value(d.default)}" for d in docs]
    width = min(40, max(len(a) for a in assignments))
    return [f"{a:<{width}}  # {d.doc}" for a, d in zip(assignments, docs, strict=True)]


def _print_summary(result, top_n: int) -> None:
    directions = {"a": "more true of A than of B", "b": "more true of B than of A"}
    count = sum(1 for row in result.ranked if row["direction"] == "a")
    for direction, meaning in directions.items():
        print(f"\nTop hypotheses {meaning} (of {count}; * = significant on held-out images):")
        for row in [r for r in result.ranked if r["direction"] == direction][:top_n]:
            print(
                f" {'*' if row['significant'] else ' '}{row['rank']:>2}. {row['hypothesis']}  "
                f"(AUROC {row['auroc']:.3f}; held out {row['auroc_test']:.3f} "
                f"[{row['auroc_ci_low']:.3f}, {row['auroc_ci_high']:.3f}], "
                f"n {row['n_a_test']}+{row['n_b_test']}, q {row['q_value']:.2g})"
            )
    if result.metrics:
        m = result.metrics
        print(f"Evaluation: Acc@1 {m['acc@1']:.2f}  Acc@5 {m['acc@5']:.2f}  Acc@N {m['acc@N']:.2f}")
    skipped = len(result.stats.get("skipped", []))
    print(f"Skipped images: {skipped} (reasons in stats.json)")
    print(f"Run folder: {result.run_dir}")


def run_describe(config: DescribeConfig, *, verbose: bool = False) -> int:
    from visdiff.pipeline.describe import describe
    from visdiff.pipeline.progress import quiet_ray_data

    quiet_ray_data(verbose)
    result = describe(config, progress=log.info)
    _print_summary(result, config.report.top_n_print)
    return 0


def run_embed(config: DescribeConfig, *, verbose: bool = False) -> int:
    from visdiff.pipeline.describe import embed
    from visdiff.pipeline.progress import quiet_ray_data

    if not config.cache.root:
        raise ConfigError("visdiff embed needs cache.root (a local folder or s3:// prefix)")
    quiet_ray_data(verbose)
    stats = embed(config, progress=log.info)
    cache = stats["cache"]
    print(
        f"Embedded {sum(stats['images'].values())} images into {cache['root']}: "
        f"{cache['misses']} computed, {cache['hits']} already cached, "
        f"{len(stats['skipped'])} skipped"
    )
    return 0


# The suite gives each pair's images and ground truth; these stand in for them while the shared
# settings are loaded and checked (each pair's config is checked again with its own values).
BENCH_PLACEHOLDERS = (
    "data.set_a=bench-pair-a",
    "data.set_b=bench-pair-b",
    "evaluate.ground_truth_a=bench-pair",
)
BENCH_OWN_KEYS = ("data.manifest", "data.group_", "data.set_", "data.filter_", "data.root")


def run_bench_command(args: argparse.Namespace) -> int:
    from visdiff.config import load_config
    from visdiff.pipeline.progress import quiet_ray_data
    from visdiff.suite.load import load_suite
    from visdiff.suite.runner import run_bench

    for item in args.overrides:
        if item.startswith(BENCH_OWN_KEYS) or item.startswith("evaluate.ground_truth"):
            raise ConfigError(
                f"override '{item}': the bench suite gives each pair's images and ground truth; "
                "use --root / --manifest for where the images are"
            )
    suite = load_suite(args.suite, root=args.root, manifest=args.manifest)
    overrides = [*args.overrides, *BENCH_PLACEHOLDERS, f"output_dir={args.output_dir}"]
    config = load_config(args.config, overrides)
    quiet_ray_data(args.verbose)
    result = run_bench(
        suite,
        config,
        output_dir=args.output_dir,
        concurrency=args.concurrency,
        resume=not args.no_resume,
        progress=log.info,
    )
    overall, pairs = result.summary["overall"], result.summary["pairs"]
    for name, group in result.summary["by_suite_difficulty"].items():
        print(
            f"{name}: Acc@1 {_acc(group['acc@1'])}  Acc@5 {_acc(group['acc@5'])}  "
            f"({group['evaluated']} of {group['pairs']} pairs scored)"
        )
    print(
        f"Overall: Acc@1 {_acc(overall['acc@1'])}  Acc@5 {_acc(overall['acc@5'])}  "
        f"({pairs['complete']} of {pairs['total']} pairs complete, {pairs['resumed']} resumed)"
    )
    print(f"Results: {Path(result.output_dir) / 'results.html'}")
    return 0 if not pairs["failed"] else 1


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _load(args: argparse.Namespace, base_file: Path | None = None) -> DescribeConfig:
    """The command's config; its output_dir is kept on `args` for the unexpected-error file."""
    from visdiff.config import load_config

    overrides = _overrides(args)
    if args.command == "demo":
        from visdiff.demo import demo_overrides

        overrides = [*demo_overrides(args.root), *overrides]
    config = load_config(getattr(args, "config", None), overrides, base_file=base_file)
    args.output_dir = config.output_dir
    return config


def _run(args: argparse.Namespace) -> int:
    if args.command == "keys":
        from visdiff.config import render_base_yaml

        lines = [render_base_yaml()] if args.yaml else [f"{x}\n" for x in keys_listing(args.prefix)]
        sys.stdout.writelines(lines)
        return 0
    if args.command == "report":
        from visdiff.report.render import write_report
        from visdiff.report.writers import RunFolder

        print(f"Report: {write_report(RunFolder(args.run_dir))}")
        return 0
    if args.command == "demo":
        return run_describe(_load(args, _default_base()), verbose=args.verbose)
    if args.command == "embed":
        return run_embed(_load(args), verbose=args.verbose)
    if args.command == "bench":
        return run_bench_command(args)
    return run_describe(_load(args), verbose=args.verbose)


def _overrides(args: argparse.Namespace) -> list[str]:
    """The key=value overrides; --overwrite is `overwrite=true` (given last, so it wins)."""
    return [*args.overrides, *(["overwrite=true"] if args.overwrite else [])]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value after an option (`bench SUITE --concurrency 2 models=cpu`): argparse leaves
    # positionals that follow an option unmatched; they are overrides like the others.
    if extra and hasattr(args, "overrides") and all("=" in x and x[0] != "-" for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging()
    try:
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler below
        return code
    except VisdiffError as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"visdiff: error: {message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`visdiff keys | head -3`): it had what it wanted. As Python's
        # docs advise, point stdout at devnull so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug or an unforeseen failure: one line + a traceback file
        return _unexpected(exc, getattr(args, "output_dir", None))


def _unexpected(exc: Exception, output_dir: str | None) -> int:
    """One line on stderr naming a file that holds the full traceback: traceback.txt in the run
    folder when it is local and its status.json records this failure (status.json then names
    the file), else a visdiff-traceback-*.txt temp file (an earlier run's folder is left as is)."""
    text = "".join(traceback.format_exception(exc))
    try:
        path = _write_traceback(text, exc, output_dir)
        where = f"full traceback: {path}"
    except OSError as write_error:
        where = f"the traceback could not be written: {first_line(write_error, typed=True)}"
    line = first_line(exc, typed=True)
    print(f"visdiff: unexpected error: {line} ({where})", file=sys.stderr)
    return UNEXPECTED_EXIT_CODE


def _write_traceback(text: str, exc: Exception, output_dir: str | None) -> str:
    from visdiff.io import storage
    from visdiff.report.writers import STATUS, TRACEBACK, RunFolder, one_line

    if output_dir and not storage.is_remote(output_dir):
        folder = RunFolder(output_dir)
        try:
            status = json.loads(storage.read_bytes(folder.path(STATUS)))
            if status.get("state") == "failed" and status.get("error") == one_line(exc)[:2000]:
                folder.write_text(TRACEBACK, text)
                status.update(exit_code=UNEXPECTED_EXIT_CODE, traceback=TRACEBACK)
                folder.write_json(STATUS, status)
                return os.path.join(folder.display(), TRACEBACK)
        except (OSError, ValueError, AttributeError):
            pass  # no status.json of this run, or a read-only folder: the temp file below
    with tempfile.NamedTemporaryFile(
        "w", prefix="visdiff-traceback-", suffix=".txt", delete=False, encoding="utf-8"
    ) as handle:
        handle.write(text)
        return handle.name


def _default_base() -> Path | None:
    """./configs/base.yaml in a checkout (so local edits apply), else the copy in the package."""
    local = Path("configs/base.yaml")
    if local.is_file():
        return local
    from importlib import resources

    packaged = Path(str(resources.files("visdiff").joinpath("_data", "configs", "base.yaml")))
    return packaged if packaged.is_file() else None
