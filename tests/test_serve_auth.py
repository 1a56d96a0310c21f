"""Issue #11, the Ray-free half: a Serve app beyond loopback needs a key (config and launcher
refuse otherwise), the app gets only the key's digest, and our client sends the key.

The real app refusing and answering over HTTP, and the launcher refusing a foreign server on
its port, are in tests/test_serving.py (they need Serve)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from visdiff.config import LLMConfig, is_loopback_host, load_config
from visdiff.errors import ConfigError

BASE = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"
FOLDERS = ["data.set_a=/tmp/a", "data.set_b=/tmp/b"]
KEY_ENV = "VISDIFF_TEST_SERVE_KEY"
KEY = "k" * 12 + "-0123456789abcdef"


def _load(*overrides: str):
    return load_config(None, [*FOLDERS, *overrides], base_file=BASE)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)
    assert _load(f"llm.http_host='{host}'").llm.http_host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "my-head-node"])
def test_beyond_loopback_without_a_key_is_refused(host: str) -> None:
    assert not is_loopback_host(host)
    with pytest.raises(ConfigError) as info:
        _load(f"llm.http_host='{host}'")  # quoted: YAML reads a bare :: as a mapping
    message = str(info.value)
    assert f"llm.http_host={host}" in message and "llm.serve_api_key_env" in message
    assert "\n" not in message


def test_beyond_loopback_with_a_key_env_is_accepted() -> None:
    cfg = _load("llm.http_host=0.0.0.0", f"llm.serve_api_key_env={KEY_ENV}")
    assert cfg.llm.serve_api_key_env == KEY_ENV


def test_the_judge_on_the_same_proxy_needs_a_key_too() -> None:
    """Serve has one proxy per cluster: the judge's app is exposed wherever the proposer's is."""
    judge = [
        "evaluate.evaluator=llm_judge",
        "evaluate.ground_truth_a=dogs",
        "evaluate.llm.backend=serve",
    ]
    exposed = ["llm.http_host=0.0.0.0", f"llm.serve_api_key_env={KEY_ENV}"]
    with pytest.raises(ConfigError, match=r"set evaluate\.llm\.serve_api_key_env"):
        _load(*exposed, *judge)
    _load(*exposed, *judge, f"evaluate.llm.serve_api_key_env={KEY_ENV}")
    _load(*exposed, "evaluate.evaluator=none")  # the judge's app is not started at all


def test_vllm_beyond_loopback_is_refused() -> None:
    with pytest.raises(ConfigError, match="llm.engine=vllm cannot check an API key"):
        _load("llm.engine=vllm", "llm.http_host=0.0.0.0", f"llm.serve_api_key_env={KEY_ENV}")


def test_external_backend_ignores_the_serve_host() -> None:
    _load("llm.backend=external", "llm.base_url=http://10.0.0.5:8000/v1", "llm.http_host=0.0.0.0")


# --- the launcher's key -----------------------------------------------------------------------


def test_launcher_reads_the_key_and_refuses_a_missing_or_short_one(monkeypatch) -> None:
    from visdiff.serving.launch import serve_api_key

    monkeypatch.delenv(KEY_ENV, raising=False)
    assert serve_api_key(LLMConfig()) is None
    with pytest.raises(ConfigError, match="llm.http_host=0.0.0.0 would serve"):
        serve_api_key(LLMConfig(http_host="0.0.0.0"))
    keyed = LLMConfig(http_host="0.0.0.0", serve_api_key_env=KEY_ENV)
    with pytest.raises(ConfigError, match=f"names {KEY_ENV}, which is not set"):
        serve_api_key(keyed)
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match="fewer than 16 characters") as info:
        serve_api_key(keyed)
    assert "short" not in str(info.value)  # never the key, not even a weak one
    monkeypatch.setenv(KEY_ENV, KEY)
    assert serve_api_key(keyed) == KEY


def test_app_args_carry_a_digest_never_the_key() -> None:
    from visdiff.serving.args import LLMAppArgs, app_identity, key_digest
    from visdiff.serving.launch import app_args_from_config

    digest = key_digest(KEY)
    args = app_args_from_config(LLMConfig(), api_key_sha256=digest)
    assert args.api_key_sha256 == digest and KEY not in args.model_dump_json()
    identity = app_identity(args, "visdiff-llm")
    assert identity["requires_key"] is True and digest not in str(identity)
    assert identity["app_name"] == "visdiff-llm" and identity["model"] == args.model
    assert app_identity(app_args_from_config(LLMConfig()), "x")["requires_key"] is False
    assert LLMAppArgs(api_key_sha256=digest.upper()).api_key_sha256 == digest
    with pytest.raises(ValidationError, match="64 hex digits"):
        LLMAppArgs(api_key_sha256=KEY)  # the key itself is not a digest


def test_vllm_app_refuses_a_key_it_cannot_check() -> None:
    from visdiff.serving.args import LLMAppArgs, key_digest
    from visdiff.serving.vllm_app import vllm_llm_config_dict

    args = LLMAppArgs(engine="vllm", model="Qwen/Qwen2.5-7B-Instruct", num_gpus=1)
    assert vllm_llm_config_dict(args)["model_loading_config"]["model_id"] == "visdiff-llm"
    keyed = args.model_copy(update={"api_key_sha256": key_digest(KEY)})
    with pytest.raises(ConfigError, match="engine vllm.*does not check an API key"):
        vllm_llm_config_dict(keyed)


def test_client_for_our_app_sends_the_key_from_the_env(monkeypatch) -> None:
    from visdiff.serving.launch import chat_client_for

    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = LLMConfig(http_host="0.0.0.0", serve_api_key_env=KEY_ENV)
    client = chat_client_for(cfg, "http://127.0.0.1:8000/visdiff-llm/v1")
    assert client.has_api_key and KEY not in repr(client)
    assert client.settings.api_key_env == KEY_ENV and KEY not in repr(client.settings)
    assert not chat_client_for(LLMConfig(), "http://127.0.0.1:8000/v1").has_api_key
