"""The LLM Serve app: protocol rules, the tiny engine, real HTTP against Serve, deployment YAMLs."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from pydantic import ValidationError

from visdiff.config import LLMConfig
from visdiff.errors import ConfigError, LLMError, ModelUnavailableError
from visdiff.llm.client import HTTPChatClient
from visdiff.llm.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    ModelList,
)

DEPLOYMENTS = Path(__file__).resolve().parents[1] / "deployments"
SERVED = "visdiff-llm-test"
MESSAGES = [
    {"role": "system", "content": "You compare image sets."},
    {"role": "user", "content": "Set A: a dog on grass. Set B: a cat on a sofa."},
]


def _request(**overrides) -> ChatCompletionRequest:
    body = {"model": SERVED, "messages": MESSAGES, "max_tokens": 12, **overrides}
    return ChatCompletionRequest.model_validate(body)


# --- protocol ---------------------------------------------------------------------------------


def test_request_defaults_and_unknown_fields_ignored() -> None:
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": MESSAGES, "frequency_penalty": 0.5, "user": "x"}
    )
    assert (req.temperature, req.top_p, req.max_tokens) == (1.0, 1.0, None)
    assert (req.seed, req.n, req.stream) == (None, 1, False)
    assert not hasattr(req, "frequency_penalty")
    assert _request(stop="END").stop_strings() == ["END"]
    assert _request(stop=["a", "", "b"]).stop_strings() == ["a", "b"]


@pytest.mark.parametrize(
    ("override", "text"),
    [
        ({"messages": []}, "at least one message"),
        ({"temperature": 2.5}, "temperature must lie in [0, 2]"),
        ({"temperature": -0.1}, "temperature must lie in [0, 2]"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"n": 2}, "n must be 1"),
        ({"stream": True}, "stream must be false"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ],
)
def test_request_validation(override: dict, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        _request(**override)
    assert text in str(info.value)


def test_response_shape() -> None:
    resp = ChatCompletionResponse.model_validate(
        {
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )
    dumped = resp.model_dump()
    assert dumped["object"] == "chat.completion" and dumped["id"].startswith("chatcmpl-")
    assert isinstance(dumped["created"], int)


# --- model and engine -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    from visdiff.serving.engines import TransformersChatEngine

    return TransformersChatEngine("tiny", served_model_name=SERVED)


def _template_bytes(messages: list[dict[str, str]]) -> int:
    """The tiny model's tokenizer is byte level: one prompt token per UTF-8 byte."""
    text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"
    return len(text.encode("utf-8"))


def test_engine_is_deterministic_for_a_seed(engine) -> None:
    first = engine.chat(_request(temperature=0.9, seed=11, max_tokens=16))
    again = engine.chat(_request(temperature=0.9, seed=11, max_tokens=16))
    other = [engine.chat(_request(temperature=0.9, seed=s, max_tokens=16)) for s in (12, 13)]
    text = first.choices[0].message.content
    assert again.choices[0].message.content == text
    assert any(o.choices[0].message.content != text for o in other)
    assert first.model == SERVED and first.choices[0].message.role == "assistant"


def test_engine_token_counts(engine) -> None:
    resp = engine.chat(_request(temperature=0, max_tokens=10))
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == _template_bytes(MESSAGES)
    assert resp.usage.completion_tokens <= 10
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    expected = "length" if resp.usage.completion_tokens == 10 else "stop"
    assert resp.choices[0].finish_reason == expected


@pytest.fixture(scope="module")
def tiny_bundle():
    from visdiff.models.llm import load_chat_model

    return load_chat_model("tiny")


def test_nucleus_of_one_token_is_greedy(tiny_bundle) -> None:
    """A top_p so small that only the most likely token survives must give the greedy answer."""
    from visdiff.models.llm import generate_chat

    messages = [{"role": "user", "content": "Set A shows yoga; set B shows meditation."}]
    greedy = generate_chat(tiny_bundle, messages, temperature=0, max_tokens=20)
    for seed in (1, 2):
        nucleus = generate_chat(
            tiny_bundle, messages, temperature=0.9, max_tokens=20, seed=seed, top_p=1e-6
        )
        assert nucleus == greedy
    sampled = generate_chat(tiny_bundle, messages, temperature=1.5, max_tokens=20, seed=1)
    assert sampled[0] != greedy[0]  # without the nucleus cut, sampling does leave greedy's path


def test_sampling_ignores_and_keeps_the_global_rng(tiny_bundle) -> None:
    """Answers depend on the request's seed only: concurrent requests share the global RNG."""
    from visdiff.models.llm import generate_chat

    messages = [{"role": "user", "content": "hello"}]
    torch.manual_seed(123)
    first = generate_chat(tiny_bundle, messages, temperature=1.0, max_tokens=12, seed=7)
    state = torch.get_rng_state()
    torch.manual_seed(999)
    state_other = torch.get_rng_state()
    again = generate_chat(tiny_bundle, messages, temperature=1.0, max_tokens=12, seed=7)
    assert again == first
    assert torch.equal(torch.get_rng_state(), state_other) and not torch.equal(state, state_other)


def test_stop_string_cuts_the_answer(engine) -> None:
    full = engine.chat(_request(temperature=0, max_tokens=16)).choices[0].message.content
    assert full, "the tiny model's greedy answer should not be empty"
    stop = full[len(full) // 2 :][:2]
    cut = engine.chat(_request(temperature=0, max_tokens=16, stop=[stop]))
    assert cut.choices[0].message.content == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


# --- Serve app over HTTP ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(ray_session, serve_http_port):
    from visdiff.serving.launch import start_llm_app, stop_llm_app

    cfg = LLMConfig(
        model="tiny",
        served_model_name=SERVED,
        http_port=serve_http_port,  # Serve binds one port per Ray instance
        route_prefix="/visdiff-llm-test",
        app_name="visdiff-llm-test",
        num_cpus=1,
        max_tokens=16,
        timeout_s=60,
    )
    base_url = start_llm_app(cfg)
    yield cfg, base_url
    stop_llm_app(cfg)


def test_app_answers_like_the_engine(served, engine) -> None:
    from visdiff.serving.launch import chat_client_for

    cfg, base_url = served
    assert base_url.endswith("/visdiff-llm-test/v1") and str(cfg.http_port) in base_url
    client = chat_client_for(cfg, base_url)
    assert client.model == SERVED and not client.has_api_key
    answer = client.reply(MESSAGES, temperature=0.8, max_tokens=12, seed=5).text
    local = engine.chat(_request(temperature=0.8, max_tokens=12, seed=5))
    assert answer == local.choices[0].message.content  # same tiny weights, same seed

    raw = httpx.post(
        f"{base_url}/chat/completions",
        json={"model": SERVED, "messages": MESSAGES, "max_tokens": 6, "temperature": 0},
        timeout=60,
    )
    assert raw.status_code == 200
    resp = ChatCompletionResponse.model_validate(raw.json())
    assert resp.model == SERVED and resp.usage is not None
    assert resp.usage.prompt_tokens == _template_bytes(MESSAGES)


def test_app_lists_models_and_health(served) -> None:
    cfg, base_url = served
    models = ModelList.model_validate(httpx.get(f"{base_url}/models", timeout=10).json())
    assert [m.id for m in models.data] == [SERVED]
    assert models.data[0].root == "tiny"
    health = httpx.get(base_url.removesuffix("/v1") + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_app_wrong_model_is_404(served) -> None:
    _, base_url = served
    raw = httpx.post(
        f"{base_url}/chat/completions", json={"model": "gpt-x", "messages": MESSAGES}, timeout=10
    )
    assert raw.status_code == 404
    error = ErrorResponse.model_validate(raw.json()).error
    assert error.code == "model_not_found" and "gpt-x" in error.message
    with pytest.raises(LLMError, match="HTTP 404"):
        HTTPChatClient(base_url, "gpt-x", max_retries=0).reply(
            MESSAGES, temperature=0, max_tokens=4
        )


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"model": SERVED, "messages": MESSAGES, "n": 3}, "n must be 1"),
        ({"model": SERVED, "messages": MESSAGES, "temperature": 7}, "temperature"),
        ({"model": SERVED}, "messages"),
        ("not json at all", "not valid JSON"),
    ],
)
def test_app_invalid_request_is_400(served, body, text: str) -> None:
    _, base_url = served
    url = f"{base_url}/chat/completions"
    if isinstance(body, str):
        raw = httpx.post(url, content=body, timeout=10)
    else:
        raw = httpx.post(url, json=body, timeout=10)
    assert raw.status_code == 400
    error = ErrorResponse.model_validate(raw.json()).error
    assert text in error.message and error.type == "invalid_request_error"


def test_app_prompt_over_context_is_400(served) -> None:
    _, base_url = served
    huge = [{"role": "user", "content": "x" * 33_000}]  # the tiny model's context is 32768
    raw = httpx.post(
        f"{base_url}/chat/completions", json={"model": SERVED, "messages": huge}, timeout=30
    )
    assert raw.status_code == 400
    assert "context" in ErrorResponse.model_validate(raw.json()).error.message


def test_app_serves_concurrent_requests(served) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cfg, base_url = served
    client = HTTPChatClient(base_url, SERVED, timeout_s=60)

    def ask(seed: int) -> str:
        return client.reply(MESSAGES, temperature=1.0, max_tokens=8, seed=seed).text

    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(ask, [1, 2, 3]))
    assert together == [ask(1), ask(2), ask(3)]  # per-request generators: no cross-talk


def test_app_with_a_text_model_refuses_images(served) -> None:
    from visdiff.llm.protocol import image_part, text_part

    _, base_url = served
    content = [image_part(b"\xff\xd8 any bytes"), text_part("What does this show?")]
    raw = httpx.post(
        f"{base_url}/chat/completions",
        json={"model": SERVED, "messages": [{"role": "user", "content": content}]},
        timeout=30,
    )
    assert raw.status_code == 400
    error = ErrorResponse.model_validate(raw.json()).error
    assert error.message == (
        "model 'tiny' does not take images; use a VLM (llm.model=tiny-vlm or a LLaVA-style hub "
        "model)"
    )
    assert error.type == "invalid_request_error"


def test_app_unknown_route_is_openai_error(served) -> None:
    _, base_url = served
    raw = httpx.get(f"{base_url}/nothing-here", timeout=10)
    assert raw.status_code == 404
    assert ErrorResponse.model_validate(raw.json()).error.type == "invalid_request_error"


def test_start_reuses_a_running_app(served) -> None:
    from ray import serve

    from visdiff.serving.launch import start_llm_app

    cfg, base_url = served
    deployed_at = serve.status().applications[cfg.app_name].last_deployed_time_s
    assert start_llm_app(cfg) == base_url
    assert serve.status().applications[cfg.app_name].last_deployed_time_s == deployed_at


# --- issue #11: a key beyond loopback, and no foreign server taken for ours --------------------

KEY_ENV = "VISDIFF_TEST_SERVE_KEY"
KEY = "test-serve-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(ray_session, serve_http_port):
    """The app as the launcher deploys it beyond loopback: it holds the key's digest only."""
    from visdiff.serving.launch import start_llm_app, stop_llm_app

    cfg = LLMConfig(
        model="tiny",
        served_model_name=SERVED,
        http_port=serve_http_port,
        route_prefix="/visdiff-llm-keyed",
        app_name="visdiff-llm-keyed",
        serve_api_key_env=KEY_ENV,
        num_cpus=0.5,
        timeout_s=60,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        base_url = start_llm_app(cfg)
        try:
            yield cfg, base_url
        finally:
            stop_llm_app(cfg)


def test_keyed_app_refuses_requests_without_the_key(keyed) -> None:
    _, base_url = keyed
    body = {"model": SERVED, "messages": MESSAGES, "max_tokens": 4}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}):
        for raw in (
            httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=10),
            httpx.get(f"{base_url}/models", headers=headers, timeout=10),
            httpx.get(base_url.removesuffix("/v1") + "/visdiff/identity", headers=headers),
        ):
            assert raw.status_code == 401, raw.text
            error = ErrorResponse.model_validate(raw.json()).error
            assert error.code == "invalid_api_key" and KEY not in raw.text
    health = httpx.get(base_url.removesuffix("/v1") + "/healthz", timeout=10)
    assert health.status_code == 200  # probes carry no key
    with pytest.raises(LLMError, match="HTTP 401"):
        HTTPChatClient(base_url, SERVED, max_retries=0).reply(MESSAGES, temperature=0, max_tokens=4)


def test_keyed_app_answers_our_client_and_names_itself(keyed, monkeypatch) -> None:
    from visdiff.serving.args import app_identity
    from visdiff.serving.launch import app_args_from_config, chat_client_for, start_llm_app

    cfg, base_url = keyed
    monkeypatch.setenv(KEY_ENV, KEY)
    client = chat_client_for(cfg, base_url)
    assert client.has_api_key
    assert isinstance(client.reply(MESSAGES, temperature=0, max_tokens=4).text, str)
    raw = httpx.get(
        base_url.removesuffix("/v1") + "/visdiff/identity",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert raw.status_code == 200
    assert raw.json() == {
        **app_identity(app_args_from_config(cfg), cfg.app_name),
        "requires_key": True,
    }
    assert start_llm_app(cfg) == base_url  # reused: it says it is ours and takes our key


def test_launcher_refuses_a_foreign_server_on_its_port(served) -> None:
    """Something else answering /v1/models with our model's name is not our app: no deploy, no
    reuse, and not one prompt sent to it."""
    import dataclasses
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from visdiff.serving.launch import start_llm_app

    seen: list[str] = []

    class Impostor(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"GET {self.path}")
            found = self.path.endswith("/v1/models")
            body = {"object": "list", "data": [{"id": SERVED, "root": "tiny"}]}
            data = json.dumps(body if found else {"detail": "Not Found"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            seen.append(f"POST {self.path}")
            self.send_error(500)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        cfg, _ = served
        foreign = dataclasses.replace(cfg, http_port=port)
        with pytest.raises(LLMError) as info:
            start_llm_app(foreign)
    finally:
        server.shutdown()
        server.server_close()
    message = str(info.value)
    assert f"port {port} on 127.0.0.1" in message and "llm.http_port" in message
    assert "\n" not in message
    assert seen and not [s for s in seen if s.startswith("POST")]


def test_stop_removes_the_app(served) -> None:
    """Runs last in this module: the fixture's own stop is then a no-op."""
    from ray import serve

    from visdiff.serving.launch import stop_llm_app

    cfg, base_url = served
    stop_llm_app(cfg)
    assert cfg.app_name not in serve.status().applications
    with pytest.raises(LLMError, match="HTTP 404"):
        HTTPChatClient(base_url, SERVED, max_retries=0).reply(MESSAGES, temperature=0, max_tokens=4)


# --- builders and deployment configs ----------------------------------------------------------


def _vllm_args(**overrides):
    from visdiff.serving.args import LLMAppArgs

    base = {"engine": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", "num_gpus": 1}
    return LLMAppArgs.model_validate({**base, **overrides})


def test_vllm_config_dict_is_a_valid_serve_llm_config() -> None:
    from visdiff.serving.vllm_app import vllm_llm_config_dict

    args = _vllm_args(
        num_gpus=2,
        num_cpus=4,
        precision="bf16",
        autoscaling={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8},
    )
    config = vllm_llm_config_dict(args)
    assert config["model_loading_config"] == {
        "model_id": "visdiff-llm",
        "model_source": "Qwen/Qwen2.5-7B-Instruct",
    }
    assert config["engine_kwargs"] == {"dtype": "bfloat16", "tensor_parallel_size": 2}
    assert config["placement_group_config"]["bundle_per_worker"] == {"CPU": 2.0, "GPU": 1}
    scaling = config["deployment_config"]["autoscaling_config"]
    assert scaling == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 8.0}
    assert vllm_llm_config_dict(_vllm_args())["deployment_config"]["num_replicas"] == 1
    try:  # Ray's own schema, where its module imports without vLLM
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig as RayLLMConfig
    except ImportError:
        return
    ray_config = RayLLMConfig(**config)
    assert ray_config.model_id == "visdiff-llm"
    assert ray_config.engine_kwargs["tensor_parallel_size"] == 2


@pytest.mark.parametrize("num_gpus", [0, 1.5])
def test_vllm_needs_whole_gpus(num_gpus: float) -> None:
    from visdiff.serving.vllm_app import vllm_llm_config_dict

    with pytest.raises(ConfigError, match="num_gpus"):
        vllm_llm_config_dict(_vllm_args(num_gpus=num_gpus))


def test_vllm_engine_without_vllm_names_the_extra() -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed: the missing-extra error cannot happen")
    from visdiff.serving.app import build_app

    with pytest.raises(ModelUnavailableError, match=r"pip install 'visdiff\[gpu\]'"):
        build_app(_vllm_args())


def test_app_args_reject_typos_and_conflicts() -> None:
    from visdiff.serving.args import LLMAppArgs

    with pytest.raises(ValidationError, match="num_replica"):
        LLMAppArgs.model_validate({"num_replica": 2})
    with pytest.raises(ValidationError, match="either num_replicas or autoscaling"):
        LLMAppArgs.model_validate({"num_replicas": 2, "autoscaling": {"max_replicas": 2}})
    with pytest.raises(ValidationError, match="max_replicas"):
        LLMAppArgs.model_validate({"autoscaling": {"min_replicas": 3, "max_replicas": 2}})


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_deployment_yaml_is_a_serve_config(path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    from visdiff.serving.app import build_app
    from visdiff.serving.args import LLMAppArgs

    schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    assert schema.applications
    for app in schema.applications:
        module_name, _, attr = app.import_path.partition(":")
        builder = getattr(importlib.import_module(module_name), attr)
        assert builder is build_app
        # Serve validates `args:` into the builder's annotated pydantic model, if it is a class.
        assert inspect.signature(builder).parameters["args"].annotation is LLMAppArgs
        args = LLMAppArgs.model_validate(app.args)
        if args.engine == "transformers":
            from ray.serve import Application

            assert isinstance(build_app(args), Application)


def test_deployment_yamls_cover_each_size() -> None:
    names = {p.name for p in DEPLOYMENTS.glob("*.yaml")}
    assert {"llm_tiny.yaml", "llm_cpu.yaml", "llm_vllm.yaml"} <= names


def _exposure_problem(config: dict) -> str | None:
    """Why a Serve config lets anyone who reaches its port use the model, or None. Beyond
    loopback every app must check a key itself: only engine transformers can (args.api_key_sha256);
    Ray Serve LLM's OpenAI app (engine vllm) has no such option."""
    from ray.serve.schema import ServeDeploySchema

    from visdiff.config import is_loopback_host
    from visdiff.serving.args import LLMAppArgs

    schema = ServeDeploySchema.model_validate(config)
    host = schema.http_options.host  # left out, Serve listens on every interface
    if is_loopback_host(host):
        return None
    for app in schema.applications:
        args = LLMAppArgs.model_validate(app.args)
        if args.engine != "transformers" or args.api_key_sha256 is None:
            return f"app {app.name} listens on {host!r} with no API key (engine {args.engine})"
    return None


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_deployment_yaml_binds_loopback_or_checks_a_key(path: Path) -> None:
    assert _exposure_problem(yaml.safe_load(path.read_text())) is None


def test_deployment_yaml_exposure_rule_catches_open_binds() -> None:
    vllm = yaml.safe_load((DEPLOYMENTS / "llm_vllm.yaml").read_text())
    tiny = yaml.safe_load((DEPLOYMENTS / "llm_tiny.yaml").read_text())
    for host in ("0.0.0.0", "::", "10.0.0.5", "llm.internal"):
        assert "no API key" in _exposure_problem({**vllm, "http_options": {"host": host}})
    assert "no API key" in _exposure_problem({k: v for k, v in vllm.items() if k != "http_options"})
    keyed_vllm = [
        {**app, "args": {**app["args"], "api_key_sha256": "0" * 64}} for app in vllm["applications"]
    ]
    assert "engine vllm" in _exposure_problem(
        {**vllm, "http_options": {"host": "0.0.0.0"}, "applications": keyed_vllm}
    )
    open_tiny = {**tiny, "http_options": {"host": "0.0.0.0"}}
    assert "no API key" in _exposure_problem(open_tiny)
    keyed = [
        {**app, "args": {**app["args"], "api_key_sha256": "0" * 64}} for app in tiny["applications"]
    ]
    assert _exposure_problem({**open_tiny, "applications": keyed}) is None
    assert _exposure_problem({**vllm, "http_options": {"host": "::1"}}) is None
