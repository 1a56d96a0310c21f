"""`ray job submit ... -- python jobs/embed.py --config configs/X.yaml cache.root=... [key=value]`

Thin entry point for Ray jobs: the same CLI as `visdiff embed` (fills the embedding cache ahead
of a describe run), joining the cluster the job runs on (`ray.address=auto` unless given)."""

from __future__ import annotations

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the repo root is the cwd but not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visdiff.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a.startswith("ray.address=") for a in args):
        args.append("ray.address=auto")
    raise SystemExit(main(["embed", *args]))
