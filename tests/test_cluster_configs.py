"""Cluster definitions in cluster/, checked offline (no cloud, no Kubernetes, no Ray cluster).

The launcher YAML goes through the steps `ray up` runs before it first contacts AWS
(`prepare_config`: merge with the AWS defaults, then `validate_config` against ray-schema.json).
The KubeRay CRDs are not installed here, so the manifests get the checks written below, plus
Ray's own translation of a RayCluster into an autoscaler config (what the in-tree autoscaler
does with the live object) and, for the RayService, Ray Serve's own schema of serveConfigV2.
Every node runs the visdiff GPU image (cluster/docker/Dockerfile.gpu), so no file installs
anything at start. Every check also runs on deliberately broken copies, so each can fail.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO_ROOT / "cluster"
AWS_YAML = CLUSTER_DIR / "aws.yaml"
RAYCLUSTER_YAML = CLUSTER_DIR / "kuberay" / "raycluster.yaml"
RAYJOB_YAML = CLUSTER_DIR / "kuberay" / "rayjob.yaml"
RAYSERVICE_YAML = CLUSTER_DIR / "kuberay" / "rayservice.yaml"
SERVE_VLLM_YAML = REPO_ROOT / "deployments" / "llm_vllm.yaml"
GPU_DOCKERFILE = CLUSTER_DIR / "docker" / "Dockerfile.gpu"
CLUSTER_FILES = [
    AWS_YAML,
    RAYCLUSTER_YAML,
    RAYJOB_YAML,
    RAYSERVICE_YAML,
    CLUSTER_DIR / "README.md",
    GPU_DOCKERFILE,
    CLUSTER_DIR / "docker" / "Dockerfile",
]
# The directory inside the image that holds the repository's jobs/ and configs/.
IMAGE_REPO_DIR = "/home/ray/visdiff"

GPU_NODE_TYPES = ("gpu_embed", "gpu_llm")
GPU_GROUPS = ("gpu-embed", "gpu-llm")

Problems = list[str]


# --- shared helpers ----------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _requirements(pyproject: dict[str, Any]) -> dict[str, Requirement]:
    """Runtime dependencies plus the gpu extra, one merged requirement per project name."""
    merged: dict[str, Requirement] = {}
    project = pyproject["project"]
    for line in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in merged:
            merged[name].extras |= req.extras
            specs = {str(s) for s in (*merged[name].specifier, *req.specifier)}
            merged[name].specifier = SpecifierSet(",".join(sorted(specs)))
        else:
            merged[name] = req
    return merged


def _exact_pin(pyproject: dict[str, Any], name: str) -> str:
    specs = list(_requirements(pyproject)[canonicalize_name(name)].specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{name} is not pinned with =="
    return specs[0].version


def simple_commands(line: str) -> list[list[str]]:
    """Shell line -> simple commands (split at &&, ||, ;, |), quotes and comments removed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _pip_installs(lines: list[str]) -> list[list[str]]:
    """The arguments (options dropped) of every `pip install` in these shell lines, in order."""
    installs = []
    for line in "\n".join(lines).replace("\\\n", " ").splitlines():
        for command in simple_commands(line):
            if command[:2] == ["pip", "install"]:
                installs.append([t for t in command[2:] if not t.startswith("-")])
    return installs


def _image_ray_version(image: str) -> str | None:
    """'rayproject/ray:2.60.0-py312-gpu' or '.../visdiff:0.1.0-ray2.60.0-py312-gpu' -> '2.60.0'."""
    match = re.search(r"-ray(\d+\.\d+\.\d+)-", image) or re.search(
        r":(\d+\.\d+\.\d+)(?:$|[-.])", image
    )
    return match.group(1) if match else None


def visdiff_gpu_image(pyproject: dict[str, Any]) -> str:
    """The tag that cluster/docker/Dockerfile.gpu documents building; every manifest runs it."""
    builds = re.findall(
        r"docker build -f cluster/docker/Dockerfile\.gpu -t (\S+) \.", GPU_DOCKERFILE.read_text()
    )
    assert len(builds) == 1, "Dockerfile.gpu must document exactly one build command"
    image = builds[0]
    version, ray = pyproject["project"]["version"], _exact_pin(pyproject, "ray")
    assert re.fullmatch(
        rf"[a-z0-9.\-]+(?::\d+)?/visdiff:{re.escape(version)}-ray{re.escape(ray)}-py3\d+-gpu", image
    ), image
    return image


def image_problems(image: str, pyproject: dict[str, Any], where: str) -> Problems:
    if image != visdiff_gpu_image(pyproject):
        return [
            f"{where}: image {image!r} is not the visdiff GPU image {visdiff_gpu_image(pyproject)!r}"
        ]
    return []


def start_install_problems(lines: list[str], where: str) -> Problems:
    """The image holds the software: nothing may be pip installed when a node or pod starts."""
    return [
        f"{where}: installs at start (pip install {' '.join(args)}); bake it into the image"
        for args in _pip_installs(lines)
    ]


def secret_problems(text: str, where: str) -> Problems:
    """Credential-looking text: AWS access key ids, credentials-file keys, literal assignments."""
    patterns = {
        "an AWS access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
        "a credentials-file key": r"aws_secret_access_key|aws_session_token",
        "a literal secret assignment": r"AWS_(?:SECRET_ACCESS_KEY|SESSION_TOKEN)\s*[:=]\s*\S",
        "a literal secret env value": r"AWS_(?:SECRET_ACCESS_KEY|SESSION_TOKEN)\W[^}\n]*value\s*:",
    }
    return [f"{where}: contains {what}" for what, rx in patterns.items() if re.search(rx, text)]


# --- cluster launcher (AWS) --------------------------------------------------------------------


def ray_validate_launcher(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before contacting AWS: fill defaults, then schema + sanity checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def launcher_problems(config: dict[str, Any], pyproject: dict[str, Any]) -> Problems:
    problems: Problems = []
    ray_version = _exact_pin(pyproject, "ray")
    if config.get("cluster_name") != "visdiff":
        problems.append("cluster_name must be visdiff")
    provider = config.get("provider", {})
    if (provider.get("type"), provider.get("region")) != ("aws", "us-west-2"):
        problems.append("provider must be aws in us-west-2")
    if not config.get("idle_timeout_minutes", 0) > 0:
        problems.append("idle_timeout_minutes must be set (> 0)")

    node_types = config.get("available_node_types", {})
    head = config.get("head_node_type")
    for name in ("gpu_embed", "gpu_llm", "cpu_worker"):
        if name not in node_types:
            problems.append(f"node type {name} is missing")
    for name, node_type in node_types.items():
        resources = node_type.get("resources", {})
        if name == head:
            if resources.get("CPU", 99) > 2 or resources.get("GPU", 0):
                problems.append("the head must advertise at most 2 CPUs and no GPU")
            continue
        if node_type.get("min_workers", 0) != 0:
            problems.append(f"{name}: min_workers must be 0 (scale from zero)")
        if not 0 < node_type.get("max_workers", 0) <= config.get("max_workers", 0):
            problems.append(f"{name}: max_workers must lie in 1..max_workers")
        has_gpu = resources.get("GPU", 0) >= 1
        if has_gpu != (name in GPU_NODE_TYPES):
            problems.append(f"{name}: GPU resources {'missing' if not has_gpu else 'unexpected'}")

    image = config.get("docker", {}).get("image", "")
    if _image_ray_version(image) != ray_version:
        problems.append(f"docker image {image!r} is not Ray {ray_version}")
    problems += image_problems(image, pyproject, "docker")
    for key in ("initialization_commands", "setup_commands", "head_setup_commands"):
        problems += start_install_problems(config.get(key, []), key)
    problems += start_install_problems(config.get("worker_setup_commands", []), "worker_setup")

    head_start = " ; ".join(config.get("head_start_ray_commands", []))
    for flag in (
        "ray start --head",
        "--port=6379",
        "--dashboard-host=0.0.0.0",
        "--autoscaling-config=~/ray_bootstrap_config.yaml",
    ):
        if flag not in head_start:
            problems.append(f"head_start_ray_commands lack {flag}")
    worker_start = " ; ".join(config.get("worker_start_ray_commands", []))
    if "ray start --address=$RAY_HEAD_IP:6379" not in worker_start:
        problems.append("worker_start_ray_commands must join $RAY_HEAD_IP:6379")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        if config.get(key, [])[:1] != ["ray stop"]:
            problems.append(f"{key} must begin with `ray stop`")
    return problems


@pytest.fixture(scope="module")
def launcher() -> dict[str, Any]:
    return _load(AWS_YAML)


def test_launcher_passes_rays_validation(launcher):
    prepared = ray_validate_launcher(launcher)
    # prepare_config filled the per-type bounds; the head never counts as a worker.
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0
    # Our commands replace the AWS defaults (no stray Ray nightly wheel install).
    assert prepared["setup_commands"] == launcher["setup_commands"]


def _locate(doc: Any, path: str) -> tuple[Any, Any]:
    """(container, key) of a dotted path; numeric parts index lists."""
    node = doc
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node, key = _locate(doc, path)
        node[key] = value

    return mutate


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node, key = _locate(doc, path)
        del node[key]

    return mutate


@pytest.mark.parametrize(
    "mutate, error",
    [
        (_set("worker_count", 3), jsonschema.ValidationError),  # unknown top-level key
        (_delete("available_node_types.gpu_embed.resources"), jsonschema.ValidationError),
        (_set("available_node_types.gpu_llm.resources", {"GPU": 0.5}), jsonschema.ValidationError),
        (_set("available_node_types.cpu_worker.min_workers", 50), ValueError),  # > max_workers
        (_set("head_node_type", "ray.head.default"), ValueError),
    ],
    ids=["unknown-key", "no-resources", "fractional-gpu", "min-above-max", "unknown-head"],
)
def test_rays_validation_rejects_broken_launcher(launcher, mutate, error):
    broken = copy.deepcopy(launcher)
    mutate(broken)
    with pytest.raises(error):
        ray_validate_launcher(broken)


def test_launcher_content(launcher, pyproject):
    assert launcher_problems(launcher, pyproject) == []


def _broken(mutate: Callable[[dict[str, Any]], None], expected: str, name: str) -> Any:
    """A broken copy: how to break it and a fragment of the problem it must raise."""
    return pytest.param(mutate, expected, id=name)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        _broken(
            _set("available_node_types.gpu_embed.min_workers", 1),
            "min_workers must be 0",
            "gpu-min-workers",
        ),
        _broken(
            _set("available_node_types.gpu_llm.resources", {"CPU": 48}),
            "gpu_llm: GPU resources missing",
            "gpu-llm-without-gpu",
        ),
        _broken(
            _set("available_node_types.cpu_worker.resources", {"CPU": 16, "GPU": 1}),
            "cpu_worker: GPU resources unexpected",
            "cpu-with-gpu",
        ),
        _broken(
            _set("available_node_types.head.resources", {}), "the head must advertise", "busy-head"
        ),
        _broken(
            _set("docker.image", "rayproject/ray:2.59.0-py311-gpu"),
            "is not Ray 2.60.0",
            "ray-version",
        ),
        _broken(
            _set("setup_commands", ["cd ~/visdiff && pip install -e '.[gpu]'"]),
            "installs at start",
            "install-at-start",
        ),
        _broken(
            _set("docker.image", "rayproject/ray-llm:2.60.0-py312-cu130"),
            "not the visdiff GPU image",
            "stock-image",
        ),
        _broken(
            _set("head_start_ray_commands.1", "ray start --head --port=6379"),
            "--autoscaling-config",
            "no-autoscaling-config",
        ),
        _broken(
            _set("worker_start_ray_commands", ["ray start --address=$RAY_HEAD_IP:6379"]),
            "must begin with `ray stop`",
            "no-ray-stop",
        ),
        _broken(_delete("idle_timeout_minutes"), "idle_timeout_minutes", "no-idle-timeout"),
    ],
)
def test_launcher_checks_fail_on_broken_copies(launcher, pyproject, mutate, expected):
    broken = copy.deepcopy(launcher)
    mutate(broken)
    assert any(expected in p for p in launcher_problems(broken, pyproject))


# --- KubeRay -----------------------------------------------------------------------------------


def _containers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs", [])]
    return [
        (name, container)
        for name, group in groups
        for container in group.get("template", {}).get("spec", {}).get("containers", [])
    ]


def raycluster_spec_problems(
    spec: dict[str, Any],
    pyproject: dict[str, Any],
    groups_needed: tuple[str, ...] = ("gpu-embed", "gpu-llm", "cpu"),
    needs_s3: bool = True,
) -> Problems:
    """ray.io/v1 RayCluster spec: required fields, versions, image, GPUs, secrets, no installs."""
    problems: Problems = []
    ray_version = _exact_pin(pyproject, "ray")
    if spec.get("rayVersion") != ray_version:
        problems.append(f"rayVersion {spec.get('rayVersion')!r} != pyproject's {ray_version}")
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling must be true")

    head = spec.get("headGroupSpec", {})
    if not isinstance(head.get("rayStartParams"), dict):
        problems.append("headGroupSpec.rayStartParams is required")
    elif head["rayStartParams"].get("dashboard-host") != "0.0.0.0":
        problems.append("the head must start the dashboard on 0.0.0.0")

    groups = spec.get("workerGroupSpecs", [])
    names = [g.get("groupName") for g in groups]
    if None in names or len(set(names)) != len(names):
        problems.append(f"every worker group needs a unique groupName, got {names}")
    if not set(groups_needed) <= set(names):
        problems.append(f"worker groups {', '.join(groups_needed)} are required, got {names}")
    for group in groups:
        name = group.get("groupName")
        if not isinstance(group.get("rayStartParams"), dict):
            problems.append(f"{name}: rayStartParams is required")
        low, now, high = (group.get(k) for k in ("minReplicas", "replicas", "maxReplicas"))
        if not all(isinstance(v, int) for v in (low, now, high)) or not low <= now <= high:
            problems.append(f"{name}: need minReplicas <= replicas <= maxReplicas")
        elif low != 0 or high < 1:
            problems.append(f"{name}: must scale from 0 to at least 1")

    containers = _containers(spec)
    if len(containers) != 1 + len(groups):
        problems.append("every group's template needs exactly one container (the Ray container)")
    for name, container in containers:
        image = container.get("image", "")
        if _image_ray_version(image) != ray_version:
            problems.append(f"{name}: image {image!r} is not tagged with Ray {ray_version}")
        problems += image_problems(image, pyproject, name)
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                problems.append(f"{name}: resources.{kind} needs cpu and memory")
        gpus = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
        if (gpus >= 1) != (name in GPU_GROUPS):
            problems.append(f"{name}: nvidia.com/gpu limit {gpus} is wrong for this group")
        for env in container.get("env", []):
            if re.search(r"(?i)secret|token|password|access_key|key_id", env.get("name", "")):
                if "value" in env or "secretKeyRef" not in env.get("valueFrom", {}):
                    problems.append(f"{name}: env {env.get('name')} must come from a Secret")
        sources = container.get("envFrom", [])
        if needs_s3 and not any("secretRef" in s for s in sources):
            problems.append(f"{name}: S3 credentials must come from envFrom secretRef")
        for source in sources:
            kinds = set(source) - {"prefix"}
            ref = source.get("secretRef") or source.get("configMapRef") or {}
            if not kinds <= {"secretRef", "configMapRef"} or set(ref) - {"name", "optional"}:
                problems.append(f"{name}: envFrom may only reference Secrets or ConfigMaps")
        script = [*container.get("command", []), *container.get("args", [])]
        problems += start_install_problems(script, name)
    return problems


def ray_autoscaling_config(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Ray's own RayCluster -> autoscaler config translation (runs the schema validation too)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    ray_cr = {"metadata": {"name": name, "namespace": "default"}, "spec": copy.deepcopy(spec)}
    return _derive_autoscaling_config_from_ray_cr(ray_cr)


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    return _load(RAYCLUSTER_YAML)


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return _load(RAYJOB_YAML)


def test_raycluster_manifest(raycluster, pyproject):
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert raycluster_spec_problems(raycluster["spec"], pyproject) == []


def test_ray_reads_the_raycluster_as_an_autoscaling_config(raycluster):
    config = ray_autoscaling_config(raycluster["spec"], "visdiff")
    node_types = config["available_node_types"]
    assert node_types["headgroup"]["resources"]["CPU"] == 0  # no tasks on the head
    assert node_types["gpu-embed"]["resources"]["GPU"] == 1
    assert node_types["gpu-llm"]["resources"]["GPU"] == 4
    assert "GPU" not in node_types["cpu"]["resources"]
    assert all(t["min_workers"] == 0 for t in node_types.values())


def test_rays_translation_rejects_a_group_without_cpu(raycluster):
    broken = copy.deepcopy(raycluster["spec"])
    cpu_group = next(g for g in broken["workerGroupSpecs"] if g["groupName"] == "cpu")
    del cpu_group["template"]["spec"]["containers"][0]["resources"]
    with pytest.raises(ValueError, match="CPU"):
        ray_autoscaling_config(broken, "visdiff")


def _worker(name: str, path: str) -> str:
    index = {"gpu-embed": 0, "gpu-llm": 1, "cpu": 2}[name]
    return f"workerGroupSpecs.{index}.{path}"


def _pip_at_start(spec: dict[str, Any]) -> None:
    container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["command"] = ["/bin/bash", "-lc", "--"]
    container["args"] = ['pip install ".[gpu]" && eval "exec $KUBERAY_GEN_RAY_START_CMD"']


def _drop_gpu_limit(name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        group = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == name)
        for kind in ("limits", "requests"):
            del group["template"]["spec"]["containers"][0]["resources"][kind]["nvidia.com/gpu"]

    return mutate


@pytest.mark.parametrize(
    "mutate, expected",
    [
        _broken(_set("rayVersion", "2.59.0"), "rayVersion", "ray-version"),
        _broken(
            _set("enableInTreeAutoscaling", False), "enableInTreeAutoscaling", "no-autoscaling"
        ),
        _broken(
            _delete("headGroupSpec.rayStartParams"),
            "headGroupSpec.rayStartParams",
            "head-no-start-params",
        ),
        _broken(_delete(_worker("cpu", "groupName")), "unique groupName", "no-group-name"),
        _broken(
            _delete(_worker("gpu-llm", "rayStartParams")),
            "gpu-llm: rayStartParams",
            "worker-no-start-params",
        ),
        _broken(
            _set(_worker("gpu-embed", "replicas"), 9),
            "minReplicas <= replicas <= maxReplicas",
            "replicas-above-max",
        ),
        _broken(_set(_worker("cpu", "minReplicas"), 2), "cpu: need minReplicas", "not-from-zero"),
        _broken(
            _set("headGroupSpec.template.spec.containers.0.image", "rayproject/ray:latest"),
            "not tagged with Ray",
            "untagged-image",
        ),
        _broken(_drop_gpu_limit("gpu-llm"), "gpu-llm: nvidia.com/gpu", "gpu-group-without-gpu"),
        _broken(
            _set(
                _worker("cpu", "template.spec.containers.0.env"),
                [{"name": "AWS_SECRET_ACCESS_KEY", "value": "not-a-real-secret"}],
            ),
            "must come from a Secret",
            "literal-secret",
        ),
        _broken(
            _delete(_worker("gpu-embed", "template.spec.containers.0.envFrom")),
            "envFrom secretRef",
            "no-secret-ref",
        ),
        _broken(_pip_at_start, "installs at start", "pip-at-pod-start"),
        _broken(
            _set(_worker("gpu-llm", "template.spec.containers.0.image"), "rayproject/ray:2.60.0"),
            "not the visdiff GPU image",
            "stock-image",
        ),
    ],
)
def test_raycluster_checks_fail_on_broken_copies(raycluster, pyproject, mutate, expected):
    spec = copy.deepcopy(raycluster["spec"])
    mutate(spec)
    assert any(expected in p for p in raycluster_spec_problems(spec, pyproject))


def rayjob_problems(job: dict[str, Any]) -> Problems:
    """The RayJob runs jobs/describe.py with a valid visdiff config and cleans up after itself."""
    from visdiff.config import load_config
    from visdiff.errors import ConfigError

    problems: Problems = []
    spec = job["spec"]
    if (job.get("apiVersion"), job.get("kind")) != ("ray.io/v1", "RayJob"):
        problems.append("must be a ray.io/v1 RayJob")
    if "rayClusterSpec" not in spec or "clusterSelector" in spec:
        problems.append("must bring its own rayClusterSpec (self-contained)")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes must be true")
    if not isinstance(spec.get("ttlSecondsAfterFinished"), int):
        problems.append("ttlSecondsAfterFinished must be set")
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    if runtime_env.get("working_dir") != IMAGE_REPO_DIR:
        problems.append(f"runtimeEnvYAML must set working_dir: {IMAGE_REPO_DIR} (the image's repo)")

    argv = shlex.split(spec.get("entrypoint", ""))
    if argv[:2] != ["python", "jobs/describe.py"] or not (REPO_ROOT / argv[1]).is_file():
        return [*problems, f"entrypoint must run python jobs/describe.py, got {argv[:2]}"]
    args = argv[2:]
    config_file = args[args.index("--config") + 1] if "--config" in args else None
    overrides = [a for a in args if "=" in a]
    if config_file is None or not (REPO_ROOT / config_file).is_file():
        problems.append(f"--config {config_file} is not a file in the repository")
    else:
        try:  # the same typed loading the job does on the cluster (inputs are not opened)
            config = load_config(REPO_ROOT / config_file, overrides)
        except ConfigError as exc:
            problems.append(f"entrypoint config: {exc}")
        else:
            if not config.output_dir.startswith("s3://"):
                problems.append("output_dir must be on S3: the cluster is deleted after the job")
    return problems


def test_rayjob_manifest(rayjob, raycluster, pyproject):
    assert rayjob_problems(rayjob) == []
    cluster_spec = rayjob["spec"]["rayClusterSpec"]
    assert raycluster_spec_problems(cluster_spec, pyproject) == []
    ray_autoscaling_config(cluster_spec, "visdiff-describe")
    # Self-contained, yet the same cluster as raycluster.yaml: the two must not drift apart.
    assert cluster_spec == raycluster["spec"]


_MANIFEST_JOB = "python jobs/describe.py --config configs/examples_manifest.yaml"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        _broken(
            _set("spec.entrypoint", "python jobs/other.py"),
            "must run python jobs/describe.py",
            "other-script",
        ),
        _broken(
            _set("spec.entrypoint", "python jobs/describe.py --config configs/nope.yaml"),
            "is not a file",
            "missing-config",
        ),
        _broken(
            _set("spec.entrypoint", "python jobs/describe.py --config configs/base.yaml"),
            "no input",
            "invalid-config",
        ),
        _broken(
            _set("spec.entrypoint", f"{_MANIFEST_JOB} output_dri=s3://b/x"),
            "output_dri",
            "unknown-key",
        ),
        _broken(
            _set("spec.entrypoint", f"{_MANIFEST_JOB} output_dir=runs/x"),
            "output_dir must be on S3",
            "local-output",
        ),
        _broken(
            _set("spec.shutdownAfterJobFinishes", False), "shutdownAfterJobFinishes", "no-shutdown"
        ),
        _broken(_delete("spec.ttlSecondsAfterFinished"), "ttlSecondsAfterFinished", "no-ttl"),
        _broken(_set("spec.runtimeEnvYAML", "env_vars: {A: b}"), "working_dir", "no-working-dir"),
        _broken(
            _set("spec.clusterSelector", {"ray.io/cluster": "visdiff"}),
            "self-contained",
            "cluster-selector",
        ),
    ],
)
def test_rayjob_checks_fail_on_broken_copies(rayjob, mutate, expected):
    broken = copy.deepcopy(rayjob)
    mutate(broken)
    assert any(expected in p for p in rayjob_problems(broken))


# --- RayService (the proposer LLM on Kubernetes) -------------------------------------------------


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    return _load(RAYSERVICE_YAML)


def rayservice_problems(service: dict[str, Any], pyproject: dict[str, Any]) -> Problems:
    """A ray.io/v1 RayService whose Serve config is deployments/llm_vllm.yaml, on GPU pods."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    problems: Problems = []
    if (service.get("apiVersion"), service.get("kind")) != ("ray.io/v1", "RayService"):
        problems.append("must be a ray.io/v1 RayService")
    spec = service.get("spec", {})
    serve_config = yaml.safe_load(spec.get("serveConfigV2") or "{}") or {}
    expected = yaml.safe_load(SERVE_VLLM_YAML.read_text())
    # The shipped yaml binds loopback; in the pod the Kubernetes Service must reach the proxy.
    expected["http_options"] = {**expected["http_options"], "host": "0.0.0.0"}
    if serve_config != expected:
        problems.append("serveConfigV2 must equal deployments/llm_vllm.yaml (host 0.0.0.0)")
    try:
        ServeDeploySchema.model_validate(serve_config)
    except ValidationError as exc:
        problems.append(f"serveConfigV2 is not a valid Serve config: {exc.errors()[0]['msg']}")
    cluster = spec.get("rayClusterConfig", {})
    problems += raycluster_spec_problems(cluster, pyproject, ("gpu-llm",), needs_s3=False)
    return problems


def test_rayservice_manifest(rayservice, pyproject):
    assert rayservice_problems(rayservice, pyproject) == []
    config = ray_autoscaling_config(rayservice["spec"]["rayClusterConfig"], "visdiff-llm")
    assert config["available_node_types"]["gpu-llm"]["resources"]["GPU"] == 1


@pytest.mark.parametrize(
    "mutate, expected",
    [
        _broken(
            _set("spec.serveConfigV2", "applications: []"),
            "must equal deployments/llm_vllm.yaml",
            "other-serve-config",
        ),
        _broken(_set("spec.rayClusterConfig.rayVersion", "2.59.0"), "rayVersion", "ray-version"),
        _broken(
            _set(
                "spec.rayClusterConfig.workerGroupSpecs.0.template.spec.containers.0.image",
                "rayproject/ray-llm:2.60.0-py312-cu130",
            ),
            "not the visdiff GPU image",
            "stock-image",
        ),
    ],
)
def test_rayservice_checks_fail_on_broken_copies(rayservice, pyproject, mutate, expected):
    broken = copy.deepcopy(rayservice)
    mutate(broken)
    assert any(expected in p for p in rayservice_problems(broken, pyproject))


def test_serve_config_check_rejects_an_invalid_serve_config(rayservice, pyproject):
    broken = copy.deepcopy(rayservice)
    broken["spec"]["serveConfigV2"] = "applications: [{name: x, import_path: 3, nope: 1}]"
    assert any("not a valid Serve config" in p for p in rayservice_problems(broken, pyproject))


# --- versions and secrets across all files ------------------------------------------------------


def test_every_file_names_pyprojects_ray_version(
    pyproject, launcher, raycluster, rayjob, rayservice
):
    ray_version = _exact_pin(pyproject, "ray")
    gpu_extra = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["gpu"]]
    assert {str(r.specifier) for r in gpu_extra if r.name == "ray"} == {f"=={ray_version}"}
    assert _image_ray_version(launcher["docker"]["image"]) == ray_version
    clusters = [raycluster["spec"], rayjob["spec"]["rayClusterSpec"]]
    for spec in [*clusters, rayservice["spec"]["rayClusterConfig"]]:
        assert spec["rayVersion"] == ray_version
        assert {_image_ray_version(c["image"]) for _, c in _containers(spec)} == {ray_version}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_no_credentials_in_cluster_files(path):
    assert secret_problems(path.read_text(), path.name) == []


@pytest.mark.parametrize(
    "leak",
    [
        "AKIA" + "Q" * 16,
        "aws_secret_access_key = abc",
        "- {name: AWS_SECRET_ACCESS_KEY, value: abc}",
        "export AWS_SECRET_ACCESS_KEY=abc",
    ],
)
def test_secret_check_catches_leaks(leak):
    text = AWS_YAML.read_text() + f"\n# {leak}\n"
    assert secret_problems(text, "aws.yaml") != []
