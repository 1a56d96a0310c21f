"""Sets too small for the statistics (fewer than 2 usable images) stop with an input error
(exit 3) naming the set: before any model loads where listing counts them, and before ranking
where decoding reveals it (status.json records the failure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.openai_standin import serve_standin
from visdiff.cli import main


def _images(folder: Path, count: int, color: str = "red") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (32, 32), color).save(folder / f"{i:03d}.jpg")
    return folder


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("visdiff: error:")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_one_image_folder_stops_before_models_load(tmp_path, capsys):
    one = _images(tmp_path / "lonely", 1)
    many = _images(tmp_path / "many", 3, "blue")
    run_dir = tmp_path / "run"
    code = main(
        ["describe", "models=tiny", f"data.set_a={many}", f"data.set_b={one}",
         f"output_dir={run_dir}"]
    )  # fmt: skip
    assert code == 3
    line = _error_line(capsys)
    assert "set b ('lonely') has 1 usable image(s)" in line
    assert str(one) in line and "at least 2" in line
    assert not run_dir.exists()  # refused before the run folder is begun


def test_manifest_group_with_one_usable_row_names_the_group(tmp_path, capsys):
    _images(tmp_path / "imgs", 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,group_name\n"
        "imgs/000.jpg,cats\nimgs/001.jpg,cats\n"
        "imgs/002.jpg,dogs\nimgs/missing.jpg,dogs\n"
    )
    code = main(
        ["describe", "models=tiny", f"data.manifest={manifest}", "data.group_a=cats",
         "data.group_b=dogs", f"output_dir={tmp_path / 'run'}"]
    )  # fmt: skip
    assert code == 3
    line = _error_line(capsys)
    assert "set b ('dogs') has 1 usable image(s)" in line
    assert "data.group_b 'dogs'" in line and "1 skipped while listing" in line


def test_a_cap_below_two_images_is_refused(tmp_path, capsys):
    a, b = _images(tmp_path / "a", 3), _images(tmp_path / "b", 3, "blue")
    code = main(
        ["describe", "models=tiny", f"data.set_a={a}", f"data.set_b={b}",
         "data.max_num_samples=1", f"output_dir={tmp_path / 'run'}"]
    )  # fmt: skip
    assert code == 3
    assert "data.max_num_samples=1" in _error_line(capsys)


def test_set_left_with_one_decodable_image_fails_naming_it(ray_session, tmp_path, capsys):
    """Listing sees two files in A, decoding finds one of them corrupt: exit 3 before ranking,
    naming set A and the skipped file; status.json says failed with the same error."""
    set_a = _images(tmp_path / "good_and_bad", 1)
    (set_a / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    set_b = _images(tmp_path / "fine", 4, "blue")
    run_dir = tmp_path / "run"
    with serve_standin(["- red squares\n- blue squares"]) as llm:  # any LLM that answers
        code = main(
            ["describe", "models=tiny", "llm.backend=external", f"llm.base_url={llm.base_url}",
             f"data.set_a={set_a}", f"data.set_b={set_b}", f"output_dir={run_dir}",
             "propose.num_rounds=1", "propose.num_samples=2"]
        )  # fmt: skip
    assert code == 3
    line = _error_line(capsys)
    assert "set a ('good_and_bad') has 1 usable image(s)" in line
    assert "zz_corrupt.jpg" in line and "at least 2" in line
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["exit_code"] == 3
    assert "set a ('good_and_bad')" in status["error"]
    assert not (run_dir / "ranked.json").exists()
