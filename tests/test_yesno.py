"""The llm/vlm rankers' yes/no questions: parsing, the scorer against a real HTTP stand-in, the
LLM answer cache, usage counts, and one small judging graph on the session's Ray."""

from __future__ import annotations

import io
import json
import pickle
import re
from typing import Any

import numpy as np
import pytest
from openai_standin import serve_standin
from PIL import Image

from visdiff import schema
from visdiff.cache.answers import ANSWERS_FOLDER, AnswerCache, answer_key
from visdiff.errors import LLMError
from visdiff.llm.caching import CachingChatClient
from visdiff.llm.client import ClientSettings, HTTPChatClient
from visdiff.llm.protocol import decode_data_url
from visdiff.llm.yesno import (
    JUDGE_ERROR,
    NO_CAPTION,
    UNPARSED,
    USAGE_COLUMNS,
    YesNoScorer,
    caption_messages,
    image_messages,
    image_mime,
    parse_yes_no,
)

HYPOTHESES = ["dog", "red", "unsure"]
CAPTIONS = {
    "a/1": "a dog on red grass",
    "a/2": "a red car",
    "b/1": "an empty street",
    "b/2": "",  # no caption: skipped, never asked
    "b/3": "a dog",  # failed upstream: passed through
}
# Rows x HYPOTHESES; "unsure" is answered with neither yes nor no (counted, scored as no).
EXPECTED = np.array(
    [[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
    dtype=np.float32,
)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Yes", True),
        ("yes.", True),
        ("  YES, the image shows it", True),
        ("**No**", False),
        ("no", False),
        ("Nope.", False),
        ("The answer is yes.", True),
        ("Answer: no", False),
        ("<think>no, wait, it is there</think>\nYes", True),
        ("<think>the dog is clearly", None),  # cut inside its reasoning
        ("maybe", None),
        ("either yes or no", None),
        ("", None),
        ("I cannot tell.", None),
    ],
)
def test_parse_yes_no(text: str, verdict: bool | None) -> None:
    assert parse_yes_no(text) is verdict


def _caption_and_hypothesis(body: dict[str, Any]) -> tuple[str, str]:
    quoted = re.findall(r'"([^"]*)"', body["messages"][0]["content"])
    return quoted[0], quoted[-1]


def answer_by_caption(body: dict[str, Any]) -> str:
    """The stand-in's judgement: yes when the caption holds the hypothesis as a word."""
    caption, hypothesis = _caption_and_hypothesis(body)
    if hypothesis == "unsure":
        return "I cannot tell from a caption."
    return "Yes." if hypothesis in caption.split() else "No"


def _rows(ids: list[str] | None = None) -> dict[str, np.ndarray]:
    ids = ids or list(CAPTIONS)
    return {
        schema.ID: np.array(ids, dtype=object),
        schema.SET: np.array([i[0] for i in ids], dtype=object),
        schema.URI: np.array([f"/x/{i}.jpg" for i in ids], dtype=object),
        schema.CAPTION: np.array([CAPTIONS[i] for i in ids], dtype=object),
        schema.ERROR: np.array(
            ["decode_error: broken" if i == "b/3" else "" for i in ids], dtype=object
        ),
    }


def _settings(base_url: str, **kwargs: Any) -> ClientSettings:
    return ClientSettings(base_url, "judge-model", **kwargs)


def test_scorer_answers_every_caption_and_hypothesis() -> None:
    with serve_standin(["unused"]) as standin:
        standin.answer_with = answer_by_caption
        scorer = YesNoScorer(_settings(standin.base_url), HYPOTHESES, mode="caption", concurrency=4)
        out = scorer(_rows())
        usage = scorer.client.usage()  # type: ignore[attr-defined]
        scorer.close()
    assert out[schema.EMBEDDING].dtype == np.float32
    np.testing.assert_array_equal(out[schema.EMBEDDING], EXPECTED)
    assert list(out[schema.ERROR]) == ["", "", "", NO_CAPTION, "decode_error: broken"]
    assert list(out[UNPARSED]) == [1, 1, 1, 0, 0]
    assert list(out[USAGE_COLUMNS["calls"]]) == [3, 3, 3, 0, 0]
    assert not out[schema.FROM_CACHE].any()
    assert list(out[schema.CAPTION]) == list(CAPTIONS.values())  # kept for a later round
    # 3 captioned rows x 3 hypotheses, the requests as sent: temperature 0, a short answer.
    assert len(standin.requests) == 9 == usage["calls"]
    assert {r["temperature"] for r in standin.requests} == {0.0}
    assert {r["max_tokens"] for r in standin.requests} == {4}
    # The stand-in counts the words of each prompt: the per-row columns add up to its usage.
    sent_tokens = sum(len(str(r["messages"][0]["content"]).split()) for r in standin.requests)
    assert usage["prompt_tokens"] == sent_tokens == out[USAGE_COLUMNS["prompt_tokens"]].sum()
    assert usage["completion_tokens"] == out[USAGE_COLUMNS["completion_tokens"]].sum() > 0


def test_scorer_asks_only_the_new_hypotheses() -> None:
    with serve_standin(["unused"]) as standin:
        standin.answer_with = answer_by_caption
        first = YesNoScorer(_settings(standin.base_url), ["dog"], mode="caption", concurrency=2)
        rows = first(_rows(["a/1", "a/2", "b/1"]))
        asked_before = len(standin.requests)
        second = YesNoScorer(
            _settings(standin.base_url),
            ["red", "dog"],
            mode="caption",
            concurrency=2,
            known=["dog"],
        )
        out = second(rows)
    assert asked_before == 3 and len(standin.requests) == 6
    assert {_caption_and_hypothesis(r)[1] for r in standin.requests[3:]} == {"red"}
    np.testing.assert_array_equal(out[schema.EMBEDDING], [[1, 1], [1, 0], [0, 0]])


def test_endpoint_failures_skip_the_row_and_are_counted() -> None:
    with serve_standin(["yes"], require_key="sk-needed") as standin:
        scorer = YesNoScorer(_settings(standin.base_url), ["dog"], mode="caption", concurrency=2)
        out = scorer(_rows(["a/1", "b/1"]))
    assert all(str(e).startswith(f"{JUDGE_ERROR}: ") and "401" in e for e in out[schema.ERROR])
    assert list(out[USAGE_COLUMNS["failed"]]) == [1, 1]
    assert not out[schema.EMBEDDING].any()


def _png(color: tuple[int, int, int], size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def answer_by_pixels(body: dict[str, Any]) -> str:
    """A VLM stand-in: looks at the image it was sent and says whether it is mostly red."""
    parts = body["messages"][0]["content"]
    image = next(p for p in parts if p["type"] == "image_url")
    text = next(p for p in parts if p["type"] == "text")["text"]
    data = decode_data_url(image["image_url"]["url"])
    red, _, blue = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
    hypothesis = re.findall(r'"([^"]*)"', text)[-1]
    says = red > blue if hypothesis == "red" else blue > red
    return "yes" if says else "no"


def test_image_messages_carry_the_bytes_inline() -> None:
    data = _png((200, 10, 10))
    (message,) = image_messages(data, "red")
    image, text = message["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert decode_data_url(image["image_url"]["url"]) == data
    assert '"red"' in text["text"] and "yes or no" in text["text"]
    assert image_mime(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert image_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert caption_messages(" a dog ", "dog")[0]["content"].count('"a dog"') == 1


def test_image_scorer_sends_each_image() -> None:
    with serve_standin(["unused"]) as standin:
        standin.answer_with = answer_by_pixels
        scorer = YesNoScorer(
            _settings(standin.base_url), ["red", "blue"], mode="image", concurrency=3
        )
        batch = {
            schema.ID: np.array(["a/r", "b/b", "b/none"], dtype=object),
            schema.SET: np.array(["a", "b", "b"], dtype=object),
            schema.URI: np.array(["r.png", "b.png", "n.png"], dtype=object),
            schema.ERROR: np.array(["", "", ""], dtype=object),
            schema.IMAGE_BYTES: np.array([_png((220, 0, 0)), _png((0, 0, 220)), b""], dtype=object),
        }
        out = scorer(batch)
    np.testing.assert_array_equal(out[schema.EMBEDDING], [[1, 0], [0, 1], [0, 0]])
    assert schema.IMAGE_BYTES not in out  # the bytes stop here
    assert out[schema.ERROR][2].startswith("read_error")
    assert len(standin.requests) == 4


# ------------------------------------------------------------------------------ answer cache


def test_answer_key_is_stable_and_covers_what_decides_the_answer() -> None:
    messages = [{"role": "user", "content": "is it red?"}]
    sampling = {"temperature": 0.0, "max_tokens": 4, "seed": None}
    key = answer_key("m", messages, sampling)
    assert key == answer_key("m", [{"content": "is it red?", "role": "user"}], dict(sampling))
    # Fixed for good: a changed canonical form would silently drop every cached answer.
    assert key == answer_key("m", json.loads(json.dumps(messages)), sampling)
    assert len(key) == 40 and re.fullmatch(r"[0-9a-f]+", key)
    others = {
        answer_key("other-model", messages, sampling),
        answer_key("m", [{"role": "user", "content": "is it blue?"}], sampling),
        answer_key("m", messages, {**sampling, "seed": 1}),
        answer_key("m", messages, {**sampling, "temperature": 0.7}),
        answer_key("m", messages, {**sampling, "max_tokens": 5}),
        answer_key("m", image_messages(_png((1, 2, 3)), "red"), sampling),
        answer_key("m", image_messages(_png((1, 2, 4)), "red"), sampling),
    }
    assert key not in others and len(others) == 7


def test_answer_cache_get_put_and_bad_entries(tmp_path) -> None:
    cache = AnswerCache(str(tmp_path))
    key = answer_key("m", [{"role": "user", "content": "q"}], {})
    assert cache.get(key) is None
    cache.put(key, {"text": "yes", "finish_reason": "stop"})
    assert cache.get(key) == {"text": "yes", "finish_reason": "stop"}
    assert pickle.loads(pickle.dumps(cache)).get(key) == {"text": "yes", "finish_reason": "stop"}
    entry = tmp_path / ANSWERS_FOLDER / key[:2] / f"{key}.json"
    entry.write_text("{not json")
    assert cache.get(key) is None  # asked again, not an error
    with pytest.raises(ValueError, match="not a hex digest"):
        cache.get("../../etc/passwd")


def test_caching_client_pays_once(tmp_path) -> None:
    messages = [{"role": "user", "content": "Is it a dog? yes or no"}]
    with serve_standin(["yes", "no"]) as standin:
        cache = AnswerCache(str(tmp_path))
        client = CachingChatClient(HTTPChatClient(standin.base_url, "m"), cache)
        first = client.reply(messages, temperature=0, max_tokens=4)
        again = client.reply(messages, temperature=0.0, max_tokens=4)  # 0 and 0.0: one entry
        seeded = client.reply(messages, temperature=0, max_tokens=4, seed=3)
        usage = client.usage()
    assert (first.text, again.text, seeded.text) == ("yes", "yes", "no")
    assert not first.cached and again.cached and not seeded.cached
    assert len(standin.requests) == 2
    assert usage["calls"] == 2 and usage["cached"] == 1
    assert client.settings == ClientSettings(standin.base_url, "m")


def test_identity_keys_the_cache_not_the_served_name(tmp_path) -> None:
    """Our Serve app answers to one name whatever model it runs: the identity keys entries."""
    messages = [{"role": "user", "content": "q"}]
    with serve_standin(["from model one", "from model two"]) as standin:
        cache = AnswerCache(str(tmp_path))
        one = ClientSettings(standin.base_url, "visdiff-llm", identity="org/model-one")
        two = ClientSettings(standin.base_url, "visdiff-llm", identity="org/model-two")
        texts = [
            CachingChatClient(s.build(), cache).reply(messages, temperature=0, max_tokens=4).text
            for s in (one, two, one)
        ]
    assert texts == ["from model one", "from model two", "from model one"]
    assert len(standin.requests) == 2


def test_a_second_scorer_run_makes_no_calls(tmp_path) -> None:
    cache = AnswerCache(str(tmp_path))
    with serve_standin(["unused"]) as standin:
        standin.answer_with = answer_by_caption
        runs = []
        for _ in range(2):
            scorer = YesNoScorer(
                _settings(standin.base_url), HYPOTHESES, mode="caption", concurrency=3, cache=cache
            )
            runs.append(scorer(_rows()))
    assert len(standin.requests) == 9  # all of them in the first run
    np.testing.assert_array_equal(runs[1][schema.EMBEDDING], EXPECTED)
    assert runs[1][USAGE_COLUMNS["calls"]].sum() == 0
    assert list(runs[1][USAGE_COLUMNS["cached"]]) == [3, 3, 3, 0, 0]
    assert list(runs[1][schema.FROM_CACHE]) == [True, True, True, False, False]
    assert list(runs[1][UNPARSED]) == [1, 1, 1, 0, 0]  # a cached "cannot tell" is still unparsed


# ------------------------------------------------------------------------------ Ray Data graph


def test_judge_images_on_ray(ray_session, tmp_path) -> None:
    import ray.data

    from visdiff.pipeline.judging import judge_images

    items = [
        {schema.ID: i, schema.SET: i[0], schema.URI: f"/x/{i}.jpg", schema.CAPTION: c}
        | {schema.ERROR: "decode_error: broken" if i == "b/3" else ""}
        for i, c in CAPTIONS.items()
    ]
    with serve_standin(["unused"]) as standin:
        standin.answer_with = answer_by_caption
        settings = _settings(standin.base_url)
        rows = ray.data.from_items(items, override_num_blocks=2)
        judged = judge_images(rows, ["dog", "red"], settings, mode="caption", concurrency=4)
        # A refinement round: only "unsure" is new, so only it is asked.
        refined = judge_images(
            rows, ["unsure", "dog", "red"], settings, mode="caption", concurrency=4,
            previous=judged,
        )  # fmt: skip
        asked = [_caption_and_hypothesis(r)[1] for r in standin.requests]

        # Mode image reads each file itself, and skips one that does not decode.
        (tmp_path / "r.png").write_bytes(_png((250, 0, 0), size=900))
        (tmp_path / "bad.png").write_bytes(b"not an image")
        standin.answer_with = answer_by_pixels
        images = ray.data.from_items(
            [
                {schema.ID: f"a/{n}", schema.SET: "a", schema.URI: str(tmp_path / n)}
                | {schema.ERROR: "", schema.IMAGE_BYTES: b""}
                for n in ("r.png", "bad.png")
            ]
        )
        seen = judge_images(images, ["red"], settings, mode="image", concurrency=2)
        sent = decode_data_url(
            standin.requests[-1]["messages"][0]["content"][0]["image_url"]["url"]
        )

    assert asked.count("dog") == asked.count("red") == asked.count("unsure") == 3
    assert judged.num_rows == 5 and judged.rows_per_set == {"a": 2, "b": 3}
    assert sorted(s["id"] for s in judged.skipped) == ["b/2", "b/3"]
    assert judged.usage["calls"] == 6 and refined.usage["calls"] == 3
    assert refined.unparsed == 3 and judged.unparsed == 0
    by_id = {r[schema.ID]: r[schema.EMBEDDING] for r in refined.dataset.take_all()}
    np.testing.assert_array_equal(np.stack([by_id[i] for i in CAPTIONS]), EXPECTED[:, [2, 0, 1]])
    assert refined.hypotheses == ["unsure", "dog", "red"]

    assert [s["id"] for s in seen.skipped] == ["a/bad.png"]
    assert {r[schema.ID]: r[schema.EMBEDDING][0] for r in seen.dataset.take_all()} == {
        "a/r.png": 1.0,
        "a/bad.png": 0.0,
    }
    assert max(Image.open(io.BytesIO(sent)).size) == 512  # shrunk before it is sent


def test_judge_images_stops_when_every_row_fails(ray_session) -> None:
    import ray.data

    from visdiff.pipeline.judging import judge_images

    rows = ray.data.from_items(
        [
            {schema.ID: "a/1", schema.SET: "a", schema.URI: "/x", schema.CAPTION: "a dog"}
            | {schema.ERROR: ""}
        ]
    )
    with serve_standin(["yes"], require_key="sk-needed") as standin:
        with pytest.raises(LLMError, match=r"every image failed .*401"):
            judge_images(rows, ["dog"], _settings(standin.base_url), mode="caption", concurrency=1)
