"""HTTPChatClient (the openai SDK behind our error messages) against a real HTTP stand-in for an
OpenAI-compatible endpoint."""

from __future__ import annotations

import pickle
import socket
import time

import pytest
from openai_standin import Delivery, chat_completion, serve_standin

from visdiff.errors import LLMError
from visdiff.llm.client import ChatClient, ChatReply, HTTPChatClient

MESSAGES = [
    {"role": "system", "content": "You compare image sets."},
    {"role": "user", "content": "Set A: dogs. Set B: cats."},
]
SECRET = "sk-test-0123456789abcdef"


def _client(base_url: str, **kwargs) -> HTTPChatClient:
    return HTTPChatClient(base_url, "some-model", **kwargs)


def test_answers_in_order_and_sends_openai_body() -> None:
    with serve_standin(["first answer", "second answer"]) as standin:
        client = _client(standin.base_url)
        assert isinstance(client, ChatClient)
        got = [
            client.reply(MESSAGES, temperature=0.3, max_tokens=50, seed=7).text,
            client.reply(MESSAGES, temperature=0.0, max_tokens=8).text,
            client.reply(MESSAGES, temperature=1.0, max_tokens=8).text,
        ]
        client.close()
    assert got == ["first answer", "second answer", "first answer"]
    body = standin.requests[0]
    assert body == {
        "model": "some-model",
        "messages": MESSAGES,
        "temperature": 0.3,
        "max_tokens": 50,
        "seed": 7,
    }
    assert "seed" not in standin.requests[1]
    assert standin.requests[1]["temperature"] == 0.0


def test_reply_carries_the_finish_reason() -> None:
    with serve_standin(["unused"]) as standin:
        client = _client(standin.base_url)
        cut = {"index": 0, "message": {"role": "assistant", "content": "1. dogs\n2. gra"}}
        standin.respond_next(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [{**cut, "finish_reason": "length"}],
            }
        )
        reply = client.reply(MESSAGES, temperature=0, max_tokens=4)
        assert reply == ChatReply("1. dogs\n2. gra", "length")
        assert client.reply(MESSAGES, temperature=0, max_tokens=4).finish_reason == "stop"


def test_keyless_client_never_sends_the_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK would read OPENAI_API_KEY by itself: our Serve app must never receive it."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with serve_standin(["ok"]) as standin:
        client = _client(standin.base_url)
        assert not client.has_api_key
        assert client.reply(MESSAGES, temperature=0, max_tokens=4).text == "ok"
    assert SECRET not in standin.headers[0].get("authorization", "")


def test_bearer_key_sent_and_never_shown() -> None:
    with serve_standin(["ok"], require_key=SECRET) as standin:
        client = _client(standin.base_url, api_key=SECRET)
        assert client.reply(MESSAGES, temperature=0, max_tokens=4).text == "ok"
        assert standin.headers[0]["authorization"] == f"Bearer {SECRET}"
        assert SECRET not in repr(client) and SECRET not in str(client)

        # A rejected key is echoed by the server (as OpenAI does); the error must not carry it.
        wrong = "sk-wrong-key-fedcba9876543210"
        bad = _client(standin.base_url, api_key=wrong)
        with pytest.raises(LLMError) as info:
            bad.reply(MESSAGES, temperature=0, max_tokens=4)
    message = str(info.value)
    assert "401" in message and "Incorrect API key" in message
    assert wrong not in message and SECRET not in message
    assert wrong not in repr(bad)
    assert len(standin.requests) == 2  # 401 is not retried


def test_from_env_reads_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISDIFF_TEST_KEY", SECRET)
    monkeypatch.delenv("VISDIFF_ABSENT_KEY", raising=False)
    with serve_standin(["keyed"], require_key=SECRET) as standin:
        keyed = HTTPChatClient.from_env(standin.base_url, "m", "VISDIFF_TEST_KEY")
        assert keyed.has_api_key
        assert keyed.reply(MESSAGES, temperature=0, max_tokens=4).text == "keyed"
    keyless = HTTPChatClient.from_env("http://127.0.0.1:1/v1", "m", "VISDIFF_ABSENT_KEY")
    assert not keyless.has_api_key


def test_retries_503_then_succeeds() -> None:
    with serve_standin(["recovered"]) as standin:
        standin.fail_next(2, 503)
        client = _client(standin.base_url, max_retries=2)
        assert client.reply(MESSAGES, temperature=0, max_tokens=4).text == "recovered"
    assert len(standin.requests) == 3


def test_gives_up_after_max_retries() -> None:
    with serve_standin(["never"]) as standin:
        standin.fail_next(5, 503)
        client = _client(standin.base_url, max_retries=1)
        started = time.monotonic()
        with pytest.raises(LLMError, match=r"HTTP 503: stand-in told to fail .*after 2 attempt"):
            client.reply(MESSAGES, temperature=0, max_tokens=4)
        waited = time.monotonic() - started
    assert len(standin.requests) == 2
    assert waited < 0.4  # the stand-in's retry-after-ms: 10 was honoured (default backoff: 0.5 s+)


def test_400_raises_with_server_message_without_retry() -> None:
    with serve_standin(["unused"]) as standin:
        client = _client(standin.base_url)
        with pytest.raises(LLMError) as info:
            client.reply([], temperature=0, max_tokens=4)
    assert "HTTP 400" in str(info.value)
    assert "messages must be a non-empty list" in str(info.value)
    assert len(standin.requests) == 1


def test_unusable_answers_raise() -> None:
    with serve_standin(["unused"]) as standin:
        client = _client(standin.base_url)
        standin.respond_next({"id": "x", "object": "chat.completion", "choices": []})
        with pytest.raises(LLMError, match="without choices"):
            client.reply(MESSAGES, temperature=0, max_tokens=4)
        refusal = {"index": 0, "message": {"role": "assistant", "content": None}}
        standin.respond_next({"choices": [{**refusal, "finish_reason": "content_filter"}]})
        with pytest.raises(LLMError, match="content_filter"):
            client.reply(MESSAGES, temperature=0, max_tokens=4)
        standin.respond_next("not an object")
        with pytest.raises(LLMError, match="not an object"):
            client.reply(MESSAGES, temperature=0, max_tokens=4)
        standin.respond_next({"detail": "the replica crashed"}, status=500)
        with pytest.raises(LLMError, match=r"HTTP 500: the replica crashed; the server failed"):
            _client(standin.base_url, max_retries=0).reply(MESSAGES, temperature=0, max_tokens=4)


def test_connection_refused_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    client = _client(url, max_retries=1)
    with pytest.raises(LLMError) as info:
        client.reply(MESSAGES, temperature=0, max_tokens=4)
    assert f"{url}/chat/completions" in str(info.value)
    assert "2 attempt" in str(info.value)


def test_bad_base_url_rejected() -> None:
    with pytest.raises(LLMError, match="http"):
        HTTPChatClient("localhost:8000/v1", "m")


def test_client_survives_pickling_after_use() -> None:
    """Clients travel into Ray tasks: the open HTTP connection pool must not."""
    with serve_standin(["a", "b"]) as standin:
        client = _client(standin.base_url, api_key="k")
        assert client.reply(MESSAGES, temperature=0, max_tokens=4).text == "a"
        clone = pickle.loads(pickle.dumps(client))
        assert clone.reply(MESSAGES, temperature=0, max_tokens=4).text == "b"
        assert standin.headers[1]["authorization"] == "Bearer k"


def test_a_dripping_body_is_cut_at_the_deadline() -> None:
    """One byte per 0.2 s never trips a per-read timeout: the total deadline must."""
    with serve_standin(["a long enough answer " * 20]) as standin:
        standin.deliver_next(Delivery(drip_s=0.2))
        client = _client(standin.base_url, timeout_s=1.0, max_retries=0)
        started = time.monotonic()
        with pytest.raises(LLMError) as info:
            client.reply(MESSAGES, temperature=0, max_tokens=4)
        waited = time.monotonic() - started
    message = str(info.value)
    assert 0.9 < waited < 3.0  # loose: the machine may be loaded
    assert f"{standin.base_url}/chat/completions" in message
    assert "llm.timeout_s=1 s" in message and "\n" not in message
    assert len(standin.requests) == 1


def test_dripping_headers_get_one_deadline_per_attempt() -> None:
    with serve_standin(["unused"]) as standin:
        for _ in range(2):
            standin.deliver_next(Delivery(drip_s=0.2, drip_headers=True))
        client = _client(standin.base_url, timeout_s=1.0, max_retries=1)
        started = time.monotonic()
        with pytest.raises(LLMError, match=r"llm\.timeout_s=1 s .*2 attempt") as info:
            client.reply(MESSAGES, temperature=0, max_tokens=4)
        waited = time.monotonic() - started
    assert 1.8 < waited < 2 * (1.0 + 1.5) + 1.0  # two deadlines plus the SDK's backoff
    assert len(standin.requests) == 2
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_answer_is_refused(chunked: bool) -> None:
    with serve_standin(["unused"]) as standin:
        client = _client(standin.base_url, max_answer_bytes=10_000)
        standin.respond_next(chat_completion("x" * 9_000))
        assert client.reply(MESSAGES, temperature=0, max_tokens=4).text == "x" * 9_000
        standin.respond_next(chat_completion("x" * 300_000))
        standin.deliver_next(Delivery())
        standin.deliver_next(Delivery(chunked=chunked))
        with pytest.raises(LLMError) as info:
            client.reply(MESSAGES, temperature=0, max_tokens=4)
    message = str(info.value)
    assert "llm.max_answer_bytes=10000" in message and "refused" in message
    assert len(standin.requests) == 2  # not retried


def test_a_chunked_answer_is_read_whole() -> None:
    with serve_standin(["unused"]) as standin:
        standin.respond_next(chat_completion("ok"))
        standin.deliver_next(Delivery(chunked=True))
        client = _client(standin.base_url)
        assert client.reply(MESSAGES, temperature=0, max_tokens=4).text == "ok"


def test_usage_counts_calls_and_tokens_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with serve_standin(["two words", "three words here"]) as standin:
        client = _client(standin.base_url, max_retries=0)
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(lambda _: client.reply(MESSAGES, temperature=0, max_tokens=4), range(24))
            )
        standin.fail_next(1, 500)
        with pytest.raises(LLMError):
            client.reply(MESSAGES, temperature=0, max_tokens=4)
        standin.respond_next({"choices": [{"index": 0, "message": {"content": "no usage"}}]})
        assert client.reply(MESSAGES, temperature=0, max_tokens=4).prompt_tokens is None
    usage = client.usage()
    words = sum(len(m["content"].split()) for m in MESSAGES)  # the stand-in's token count
    assert usage == {
        "calls": 26,
        "failed": 1,
        "prompt_tokens": 24 * words,
        "completion_tokens": sum(r.completion_tokens for r in replies),
        "cached": 0,
    }
    assert sorted({r.completion_tokens for r in replies}) == [2, 3]
    assert replies[0] == ChatReply(replies[0].text, "stop")  # equality ignores what it cost
    assert pickle.loads(pickle.dumps(client)).usage()["calls"] == 0  # each process counts its own


def test_settings_rebuild_the_client_without_carrying_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from visdiff.llm.client import ClientSettings

    monkeypatch.setenv("VISDIFF_TEST_KEY", SECRET)
    with serve_standin(["from the clone"], require_key=SECRET) as standin:
        client = HTTPChatClient.from_env(
            standin.base_url, "m", "VISDIFF_TEST_KEY", timeout_s=9, identity="org/real-model"
        )
        settings = client.settings
        shipped = pickle.dumps(settings)
        assert SECRET.encode() not in shipped and SECRET not in repr(settings)
        clone = pickle.loads(shipped).build()
        assert clone.reply(MESSAGES, temperature=0, max_tokens=4).text == "from the clone"
    assert settings == ClientSettings(
        standin.base_url, "m", "VISDIFF_TEST_KEY", 9.0, identity="org/real-model"
    )
    assert settings.model_identity == "org/real-model"
    assert ClientSettings("http://h/v1", "served-name").model_identity == "served-name"
    with pytest.raises(LLMError, match="from_env"):
        _ = _client("http://127.0.0.1:1/v1", api_key=SECRET).settings
    assert _client("http://127.0.0.1:1/v1").settings.api_key_env == ""
