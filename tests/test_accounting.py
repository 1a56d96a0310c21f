"""Full accounting of a run's inputs: every entry a folder listing meets is either used or in
the skipped list with a reason, and per set listed = used + skipped. (Through a whole describe
run, with decoding and manifest rows too: tests/test_fault_load.py.)"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from tests.nonroot import run_unprivileged
from visdiff.config import DataConfig
from visdiff.sources.plan import plan_inputs

GOOD = ("000.jpg", "001.png", "sub/002.jpg")
# entry (relative to the set folder) -> reason code of its skip, at listing or decoding
ODD = {
    "gone.jpg": "broken_link",
    "loop.jpg": "link_loop",
    "linked": "linked_folder",
    "pipe.jpg": "not_a_file",
    "notes.txt": "not_an_image",
    ".DS_Store": "hidden",
}
EMPTY = "empty.jpg"  # listed as an image; decoding finds zero bytes


def _odd_folder(root: Path) -> Path:
    folder = root / "odd"
    for i, name in enumerate(GOOD):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (200, 10 * i, 10)).save(folder / name)
    os.symlink(folder / "000.jpg", folder / "alias.jpg")  # a link to a file is a file: used
    os.symlink(root / "nowhere.jpg", folder / "gone.jpg")
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (32, 32), "green").save(elsewhere / "x.jpg")
    os.symlink(elsewhere, folder / "linked")  # not followed
    os.mkfifo(folder / "pipe.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / EMPTY).write_bytes(b"")
    return folder


def _plain_folder(root: Path, count: int = 3) -> Path:
    folder = root / "plain"
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (32, 32), "blue").save(folder / f"{i}.jpg")
    return folder


def test_listing_an_odd_folder_accounts_for_every_entry(tmp_path: Path) -> None:
    odd, plain = _odd_folder(tmp_path), _plain_folder(tmp_path)
    plan = plan_inputs(DataConfig(set_a=str(odd), set_b=str(plain)))
    used = sorted(os.path.relpath(r.uri, odd) for r in plan.a.records)
    assert used == sorted([*GOOD, "alias.jpg", EMPTY])  # decoding judges the empty file
    reasons = {os.path.relpath(s["uri"], odd): s["reason"] for s in plan.skipped}
    assert reasons == ODD and {s["set"] for s in plan.skipped} == {"a"}
    entries = [  # every non-folder entry below `odd`, links to folders included
        os.path.join(folder, name)
        for folder, dirs, files in os.walk(odd)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]
    ]
    assert len(entries) == len(plan.a.records) + len(plan.skipped)
    assert len(plan.b.records) == 3


def _check_unreadable_counted(root: Path) -> None:
    """Run as a user that mode bits bind (see tests/nonroot.py)."""
    odd, plain = _odd_folder(root), _plain_folder(root)
    (odd / "secret.jpg").write_bytes(b"x")
    (odd / "secret.jpg").chmod(0)
    (odd / "closed").mkdir()
    (odd / "closed").chmod(0)
    try:
        plan = plan_inputs(DataConfig(set_a=str(odd), set_b=str(plain)))
    finally:
        (odd / "closed").chmod(0o755)
    reasons = {os.path.relpath(s["uri"], odd): s["reason"] for s in plan.skipped}
    assert reasons == {**ODD, "secret.jpg": "unreadable", "closed": "unreadable"}, reasons


def test_unreadable_file_and_folder_are_counted(tmp_path: Path) -> None:
    run_unprivileged(_check_unreadable_counted, tmp_path)
