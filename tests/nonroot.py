"""Run a test's check as an unprivileged user. Root reads and lists everything whatever its mode,
so a check that an unreadable file or folder is handled means nothing as root, and CI runs as
root: there the check runs in a child process as uid/gid 65534 (`nobody`), without capabilities.

As a script (the child): `python tests/nonroot.py FILE FUNCTION FOLDER` loads FILE and calls
FUNCTION(Path(FOLDER)) after making sure that it really is not root."""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

NOBODY = 65534
REPO = Path(__file__).resolve().parents[1]


def _drop_privileges() -> list[str]:
    """The command prefix that runs the rest as uid/gid 65534 with no extra groups."""
    if setpriv := shutil.which("setpriv"):
        return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", "nobody", "--"]
    import pytest

    reason = "running as root and neither setpriv nor runuser (util-linux) is installed"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the unprivileged checks; install util-linux")
    pytest.skip(reason)


def run_unprivileged(check: Callable[[Path], None], tmp_path: Path, timeout: float = 120) -> None:
    """Call `check(folder)` with an empty folder it can write: directly when this process is not
    root (folder = tmp_path), else in a child as uid 65534 (a fresh folder under the system temp
    dir, owned by that user: pytest's own tmp dirs are root's, mode 0700)."""
    if os.geteuid() != 0:
        check(tmp_path)
        return
    prefix = _drop_privileges()
    folder = Path(tempfile.mkdtemp(prefix="visdiff-nonroot-"))
    os.chown(folder, NOBODY, NOBODY)
    env = {
        **os.environ,
        "HOME": str(folder),
        "TMPDIR": str(folder),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",  # the checkout is root's: no __pycache__ writes
    }
    command = [
        *prefix,
        sys.executable,
        __file__,
        inspect.getfile(check),
        check.__name__,
        str(folder),
    ]
    try:
        result = subprocess.run(
            command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # as root: mode-0 folders inside go too
    if result.returncode != 0:
        import pytest

        pytest.fail(
            f"{check.__name__} failed as uid {NOBODY} (exit {result.returncode}; should the "
            f"child not even start: {sys.executable} and {REPO} must be readable by that "
            f"user):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )


def _main(path: str, name: str, folder: str) -> None:
    if os.geteuid() == 0 or os.getuid() == 0:
        sys.exit(f"nonroot: still root (uid {os.getuid()}, euid {os.geteuid()}): nothing checked")
    spec = importlib.util.spec_from_file_location(f"_nonroot_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    getattr(module, name)(Path(folder))
    print(f"nonroot: {name} passed as uid {os.geteuid()}")


if __name__ == "__main__":
    _main(*sys.argv[1:4])
