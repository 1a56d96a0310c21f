"""The container images in cluster/docker/, checked without a Docker engine: base tags name the
pinned Ray release and one Python version, the files they COPY exist and pass the dockerignore,
and the GPU image installs the `gpu` set (no dev pins) on top of the base image's own torch."""

from __future__ import annotations

import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.test_cluster_configs import simple_commands

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "cluster" / "docker"
CPU, GPU = DOCKER_DIR / "Dockerfile", DOCKER_DIR / "Dockerfile.gpu"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and line continuations joined."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(
            line
            for line in dockerfile.read_text().splitlines()
            if not line.lstrip().startswith("#")
        ),
    )
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _ray_pin() -> str:
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        if req.name == "ray":
            return str(req.specifier).removeprefix("==")
    raise AssertionError("ray is not pinned in pyproject.toml")


def base_image(dockerfile: Path) -> str:
    froms = [args for word, args in instructions(dockerfile) if word == "FROM"]
    assert len(froms) == 1, f"{dockerfile.name}: expected one FROM, got {froms}"
    return froms[0]


def base_image_problems(dockerfile: Path, repository: str, platform: str) -> list[str]:
    image = base_image(dockerfile)
    match = re.fullmatch(rf"{re.escape(repository)}:(\d+\.\d+\.\d+)-py3(\d+)-{platform}", image)
    if not match:
        return [f"{dockerfile.name}: FROM {image} is not {repository}:<ray>-py3XX-{platform}"]
    problems = []
    if match.group(1) != _ray_pin():
        problems.append(f"{dockerfile.name}: base image Ray {match.group(1)} != {_ray_pin()}")
    python = Version(f"3.{match.group(2)}")
    if python not in SpecifierSet(_pyproject()["project"]["requires-python"]):
        problems.append(f"{dockerfile.name}: Python {python} is outside requires-python")
    return problems


def _python_tag(dockerfile: Path) -> str:
    return re.search(r"-py(3\d+)-", base_image(dockerfile)).group(1)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negate
    return ignored


def copy_problems(dockerfile: Path) -> list[str]:
    """Every COPY source exists in the repository and is not excluded by the dockerignore."""
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    problems = []
    for word, args in instructions(dockerfile):
        if word != "COPY":
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        for source in sources:
            if not (REPO_ROOT / source).exists():
                problems.append(f"{dockerfile.name}: COPY {source}: no such file in the repo")
            elif _ignored(source, patterns):
                problems.append(
                    f"{dockerfile.name}: COPY {source} is excluded by {ignore_file.name}"
                )
    return problems


def pip_installs(dockerfile: Path) -> list[list[str]]:
    return [
        command[2:]
        for word, args in instructions(dockerfile)
        if word == "RUN"
        for command in simple_commands(args)
        if command[:2] == ["pip", "install"]
    ]


def gpu_install_problems(dockerfile: Path) -> list[str]:
    """The GPU image installs exactly `.[gpu]`, constrained only by the base image's own pins."""
    problems = []
    installs = pip_installs(dockerfile)
    project = [i for i in installs if ".[gpu]" in i]
    if len(installs) != 1 or len(project) != 1:
        return [f"{dockerfile.name}: expected one pip install of '.[gpu]', got {installs}"]
    args = project[0]
    constraints = [args[i + 1] for i, a in enumerate(args) if a in {"-c", "--constraint"}]
    if any("constraints-dev" in c for c in constraints):
        problems.append(f"{dockerfile.name}: the dev constraints must not apply to the gpu set")
    if constraints != ["/tmp/image-pins.txt"]:
        problems.append(f"{dockerfile.name}: the install must be constrained by the image's pins")
    if [a for a in args if not a.startswith("-") and a not in constraints] != [".[gpu]"]:
        problems.append(f"{dockerfile.name}: installs more than '.[gpu]': {args}")
    pinned = [
        command
        for word, args in instructions(dockerfile)
        if word == "RUN"
        for command in simple_commands(args)
        if command[-2:] == [">", "/tmp/image-pins.txt"]
    ]
    if not pinned or pinned[0][:3] != ["grep", "-iE", "^(ray|vllm|torch|torchvision)=="]:
        problems.append(f"{dockerfile.name}: must pin the base image's ray, vllm and torch")
    return problems


def cpu_torch_pins(dockerfile: Path) -> dict[str, str]:
    """torch/torchvision pins of the CPU image's first install (from PyTorch's CPU index)."""
    first = pip_installs(dockerfile)[0]
    assert "https://download.pytorch.org/whl/cpu" in first, "torch must come from the CPU index"
    return {
        Requirement(a).name: str(Requirement(a).specifier).removeprefix("==")
        for a in first
        if not a.startswith("-") and a.startswith("torch")
    }


def test_gpu_image_base():
    assert base_image_problems(GPU, "rayproject/ray-llm", r"cu\d+") == []


def test_cpu_image_base():
    assert base_image_problems(CPU, "rayproject/ray", "cpu") == []


def test_both_images_run_the_same_python():
    assert _python_tag(CPU) == _python_tag(GPU)  # Ray needs one Python on every node


@pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=lambda p: p.name)
def test_copied_files_exist(dockerfile):
    assert copy_problems(dockerfile) == []
    copied = {shlex.split(a)[-2] for w, a in instructions(dockerfile) if w == "COPY"}
    # The job entry points and configs the RayJob runs from the image are in it.
    assert {"visdiff", "configs", "jobs", "deployments", "pyproject.toml"} <= copied | {
        "pyproject.toml"
    }


def test_gpu_image_installs_the_gpu_set():
    assert gpu_install_problems(GPU) == []


def test_cpu_image_installs_the_project_with_cpu_torch():
    pins = cpu_torch_pins(CPU)
    assert set(pins) == {"torch", "torchvision"}
    assert ["--no-cache-dir", "."] == pip_installs(CPU)[1]


def test_checks_fail_on_broken_dockerfiles(tmp_path):
    text = GPU.read_text()
    broken = tmp_path / "Dockerfile.gpu"
    (tmp_path / "Dockerfile.gpu.dockerignore").write_text("*\n!visdiff/\n")
    cases = {
        "rayproject/ray-llm:2.59.0-py312-cu130": "base image Ray 2.59.0",
        "rayproject/ray-llm:2.60.0-py310-cu130": "outside requires-python",
        "rayproject/ray:2.60.0-py312-gpu": "is not rayproject/ray-llm",
    }
    for bad, expected in cases.items():
        broken.write_text(text.replace(base_image(GPU), bad))
        problems = base_image_problems(broken, "rayproject/ray-llm", r"cu\d+")
        assert any(expected in p for p in problems), (bad, problems)
    broken.write_text(text.replace('".[gpu]"', '"."'))
    assert gpu_install_problems(broken) != []
    broken.write_text(text.replace("-c /tmp/image-pins.txt", "-c .ci/constraints-dev.txt"))
    assert any("dev constraints" in p for p in gpu_install_problems(broken))
    broken.write_text(text.replace("COPY --chown=ray:users jobs", "COPY --chown=ray:users nojobs"))
    assert any("no such file" in p for p in copy_problems(broken))
    broken.write_text(text)
    assert any("excluded by" in p for p in copy_problems(broken))  # configs/ not re-included
