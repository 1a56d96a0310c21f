"""The commands in cluster/README.md and README.md match the repository: every file they name
exists, image tags name the pinned Ray release and the image the Dockerfiles build, extras and
constraints files exist, and each `jobs/*.py --config ... key=value` line loads as a config."""

from __future__ import annotations

import glob
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.test_cluster_configs import visdiff_gpu_image

REPO_ROOT = Path(__file__).resolve().parents[1]
READMES = [REPO_ROOT / "cluster" / "README.md", REPO_ROOT / "README.md"]
REPO_DIRS = ("cluster/", "configs/", "jobs/", "deployments/", ".ci/", "bench/", "tests/")


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def shell_commands(markdown: str) -> list[list[str]]:
    """Simple commands of every ```bash block: continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            current: list[str] = []
            for token in lexer:
                if token in {"&&", "||", ";", "|", "&"}:
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            commands.append(current)
    return [c for c in commands if c]


def _expand(token: str) -> str:
    return token.replace("$REGISTRY", "registry.example.com")


def command_problems(command: list[str]) -> list[str]:
    problems = []
    pyproject = _pyproject()
    ray_pin = next(
        str(r.specifier).removeprefix("==")
        for r in map(Requirement, pyproject["project"]["dependencies"])
        if r.name == "ray"
    )
    text = " ".join(command)
    for token in command:  # repository paths (globs allowed) must exist
        path = token.split("=", 1)[-1]
        if path.startswith(REPO_DIRS) and not glob.glob(str(REPO_ROOT / path)):
            problems.append(f"{text}: {path} does not exist")
    for tag in re.findall(r"rayproject/ray(?:-llm)?:(\d+\.\d+\.\d+)", text):
        if tag != ray_pin:
            problems.append(f"{text}: Ray image {tag} != pinned {ray_pin}")
    images = [_expand(t) for t in command if "/visdiff:" in t]
    for image in images:
        if image.endswith("-gpu") and image != visdiff_gpu_image(pyproject):
            problems.append(f"{text}: {image} is not the image Dockerfile.gpu builds")
    if command[:2] == ["docker", "build"] and "-f" in command:
        dockerfile = REPO_ROOT / command[command.index("-f") + 1]
        tag = command[command.index("-t") + 1]
        if f"docker build -f {command[command.index('-f') + 1]} -t {tag} ." not in (
            dockerfile.read_text() if dockerfile.is_file() else ""
        ):
            problems.append(f"{text}: differs from the build command in {dockerfile.name}")
    if "pip" in command and "install" in command:
        extras = set(pyproject["project"]["optional-dependencies"])
        for token in command:
            for extra in re.findall(r"^\.\[([a-z,]+)\]$", token):
                if not set(extra.split(",")) <= extras:
                    problems.append(f"{text}: extra [{extra}] is not in pyproject.toml")
            if "constraints-dev" in token and "gpu" in text:
                problems.append(f"{text}: the gpu extra must not take the dev constraints")
    if "python" in command and any(t.startswith("jobs/") for t in command):
        problems += _job_problems(command)
    return problems


def _job_problems(command: list[str]) -> list[str]:
    from visdiff.config import load_config
    from visdiff.errors import ConfigError

    args = command[command.index("python") + 2 :]
    if "--config" not in args:
        return []
    config = REPO_ROOT / args[args.index("--config") + 1]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    if not config.is_file():
        return []  # reported as a missing path
    try:
        load_config(config, overrides)
    except ConfigError as exc:
        return [f"{' '.join(command)}: {exc}"]
    return []


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_readme_commands_match_the_repository(readme):
    commands = shell_commands(readme.read_text())
    assert commands, f"no bash commands found in {readme}"
    assert [p for c in commands for p in command_problems(c)] == []


def test_cluster_readme_covers_every_cluster_file():
    text = (REPO_ROOT / "cluster" / "README.md").read_text()
    for path in (REPO_ROOT / "cluster").rglob("*"):
        if path.is_file() and path.suffix in {".yaml", ""} and path.name != "README.md":
            name = str(path.relative_to(REPO_ROOT / "cluster"))
            assert name in text, f"cluster/README.md does not mention {name}"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("kubectl apply -f cluster/kuberay/nope.yaml", "does not exist"),
        ("docker run rayproject/ray:2.59.0-py312-cpu", "Ray image 2.59.0"),
        ("pip install -e '.[gpus]'", "extra [gpus]"),
        ("pip install -c .ci/constraints-dev.txt '.[gpu]'", "must not take the dev constraints"),
        (
            "docker build -f cluster/docker/Dockerfile.gpu -t registry.example.com/visdiff:9-gpu .",
            "is not the image",
        ),
        ("python jobs/describe.py --config configs/examples_manifest.yaml modles=gpu", "modles"),
    ],
)
def test_checks_fail_on_broken_commands(line, expected):
    (command,) = shell_commands(f"```bash\n{line}\n```")
    assert any(expected in p for p in command_problems(command)), command_problems(command)
