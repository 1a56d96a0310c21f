"""Command line: `visdiff describe --config FILE [key=value ...]` and `visdiff demo`.
No logic of its own: parse, build the config, call the library, print."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from visdiff.config import DescribeConfig, load_config, valid_keys
from visdiff.errors import VisdiffError

log = logging.getLogger("visdiff")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visdiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    describe = sub.add_parser("describe", help="describe how image set A differs from set B")
    describe.add_argument("--config", type=Path, help="experiment YAML (over configs/base.yaml)")
    describe.add_argument("overrides", nargs="*", help="key=value overrides, e.g. models=cpu")
    demo = sub.add_parser("demo", help="make a small demo dataset and describe it (tiny models)")
    demo.add_argument("--root", type=Path, default=Path("runs/demo"), help="demo data + run folder")
    demo.add_argument("overrides", nargs="*", help="key=value overrides")
    embed = sub.add_parser("embed", help="fill the embedding cache (cache.root) for both sets")
    embed.add_argument("--config", type=Path, help="experiment YAML (over configs/base.yaml)")
    embed.add_argument("overrides", nargs="*", help="key=value overrides")
    sub.add_parser("keys", help="list every config key")
    return parser


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[visdiff %(asctime)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger("visdiff")
    if not root.handlers:
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _print_summary(result, top_n: int) -> None:
    print(f"\nTop hypotheses (more true of A than of B), of {len(result.ranked)}:")
    for row in result.ranked[:top_n]:
        print(
            f"  {row['rank']:>2}. {row['hypothesis']}  "
            f"(AUROC {row['auroc']:.3f}, diff {row['diff']:+.4f}, p {row['p_value']:.2g})"
        )
    if result.metrics:
        m = result.metrics
        print(f"Evaluation: Acc@1 {m['acc@1']:.2f}  Acc@5 {m['acc@5']:.2f}  Acc@N {m['acc@N']:.2f}")
    skipped = len(result.stats.get("skipped", []))
    print(f"Skipped images: {skipped} (reasons in stats.json)")
    print(f"Run folder: {result.run_dir}")


def run_describe(config: DescribeConfig) -> int:
    from visdiff.pipeline import describe

    result = describe(config, progress=log.info)
    _print_summary(result, config.report.top_n_print)
    return 0


def run_embed(config: DescribeConfig) -> int:
    from visdiff.errors import ConfigError
    from visdiff.pipeline import embed

    if not config.cache.root:
        raise ConfigError("visdiff embed needs cache.root (a local folder or s3:// prefix)")
    stats = embed(config, progress=log.info)
    cache = stats["cache"]
    print(
        f"Embedded {sum(stats['images'].values())} images into {cache['root']}: "
        f"{cache['misses']} computed, {cache['hits']} already cached, "
        f"{len(stats['skipped'])} skipped"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging()
    try:
        if args.command == "keys":
            print("\n".join(valid_keys()))
            return 0
        if args.command == "demo":
            from visdiff.demo import make_demo_sets

            set_a, set_b = make_demo_sets(args.root / "data")
            overrides = [
                f"data.set_a={set_a}",
                f"data.set_b={set_b}",
                f"output_dir={args.root / 'run'}",
                "propose.num_samples=8",
                *args.overrides,
            ]
            return run_describe(load_config(None, overrides, base_file=_default_base()))
        if args.command == "embed":
            return run_embed(load_config(args.config, args.overrides))
        return run_describe(load_config(args.config, args.overrides))
    except VisdiffError as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"visdiff: error: {message}", file=sys.stderr)
        return exc.exit_code


def _default_base() -> Path | None:
    base = Path("configs/base.yaml")
    return base if base.is_file() else None
