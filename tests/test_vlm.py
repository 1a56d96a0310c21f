"""The VLM path: image grids, image content parts in the protocol, the tiny random VLM, the
engine's choice between VLM and LLM, the VLM proposer round, and one Serve app over HTTP."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from openai_standin import serve_standin
from PIL import Image
from pydantic import ValidationError

from visdiff.config import TINY, TINY_VLM, DescribeConfig, LLMConfig, ProposeConfig
from visdiff.errors import ConfigError, InputError
from visdiff.llm.client import HTTPChatClient
from visdiff.llm.protocol import (
    MAX_IMAGES_PER_REQUEST,
    ChatCompletionRequest,
    ChatMessage,
    ErrorResponse,
    decode_data_url,
    image_part,
    text_part,
)
from visdiff.stages.grid import GAP_PX, image_grid, image_grid_members

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)


def _encode(image: Image.Image, fmt: str = "JPEG", **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    return _encode(Image.new("RGB", size, color))


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.mode == "RGB"
    return image


def _near(pixel: tuple[int, ...], color: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(p - c) <= tol for p, c in zip(pixel, color, strict=True))


# --- grids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "columns", "rows"), [(1, 1, 1), (3, 2, 2), (5, 3, 2), (9, 3, 3)])
def test_grid_is_near_square_with_one_cell_per_image(count: int, columns: int, rows: int) -> None:
    cell = 40
    data, used = image_grid([_solid(RED)] * count, cell_px=cell, max_images=16)
    assert used == count
    grid = _open(data)
    step = cell + GAP_PX
    assert grid.size == (columns * step - GAP_PX, rows * step - GAP_PX)


def test_grid_places_images_in_order_and_keeps_aspect() -> None:
    """A wide image fills its cell's width and is centred; the gap shows the background."""
    cell = 40
    images = [_solid(RED, (80, 40)), _solid(BLUE, (30, 60)), _solid(GREEN)]
    grid = _open(image_grid(images, cell_px=cell, max_images=3)[0])
    step = cell + GAP_PX
    assert _near(grid.getpixel((cell // 2, cell // 2)), RED)
    assert _near(grid.getpixel((step + cell // 2, cell // 2)), BLUE)
    assert _near(grid.getpixel((cell // 2, step + cell // 2)), GREEN)
    # The wide red image is 40 x 20 in its cell: grey above it, red across the full width.
    assert not _near(grid.getpixel((cell // 2, 3)), RED)
    assert _near(grid.getpixel((2, cell // 2)), RED)
    # The tall blue image is 20 x 40: grey at its cell's left edge.
    assert not _near(grid.getpixel((step + 3, cell // 2)), BLUE)


def test_grid_skips_undecodable_images_and_caps_the_count() -> None:
    images = [b"not an image", _solid(RED), b"", _solid(BLUE), _solid(GREEN), _solid(RED)]
    data, used = image_grid_members(images, cell_px=20, max_images=3)
    assert used == [1, 3, 4]
    assert image_grid(images, cell_px=20, max_images=3)[1] == 3
    assert _open(data).size == (2 * 20 + GAP_PX, 2 * 20 + GAP_PX)
    with pytest.raises(InputError, match="none of the 2 images"):
        image_grid([b"junk", b"\xff\xd8 cut jpeg"], cell_px=20, max_images=4)


def test_grid_turns_exif_rotated_and_transparent_images_upright_rgb() -> None:
    """A 60 x 20 JPEG whose EXIF says "rotate 90°" is a tall image; RGBA lands on white."""
    wide = Image.new("RGB", (60, 20), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    rotated = _encode(wide, exif=exif.tobytes())
    clear = _encode(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), "PNG")
    grid = _open(image_grid([rotated, clear], cell_px=30, max_images=2)[0])
    assert _near(grid.getpixel((15, 15)), RED)
    assert not _near(grid.getpixel((2, 15)), RED)  # tall now: background left of it
    assert _near(grid.getpixel((30 + GAP_PX + 15, 15)), (255, 255, 255))


# --- protocol ---------------------------------------------------------------------------------


def test_image_and_text_parts_round_trip() -> None:
    data = _solid(RED)
    part = image_part(data, mime="image/png")
    assert part["image_url"]["url"].startswith("data:image/png;base64,")
    assert decode_data_url(part["image_url"]["url"]) == data
    message = ChatMessage.model_validate(
        {"role": "user", "content": [text_part("first"), part, text_part("second")]}
    )
    assert message.images() == [data] and message.text() == "first\nsecond"
    dumped = message.model_dump(exclude_none=True)
    assert dumped["content"][1] == part  # what an engine gets back is what was sent
    plain = ChatMessage(role="user", content="hi")
    assert plain.images() == [] and plain.text() == "hi"


def _chat(content: object) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (
            [{"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}],
            "not a data: URL",
        ),
        ([{"type": "image_url", "image_url": {"url": "data:image/jpeg,abc"}}], "base64 data:"),
        (
            [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,@@@"}}],
            "invalid base64",
        ),
        ([{"type": "audio", "data": "x"}], "type 'text' or 'image_url'"),
        ([{"type": "text"}], "content part 0 (text)"),
        (42, "string or a list of content parts"),
    ],
)
def test_bad_content_is_refused_in_one_line(content: object, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(_chat(content))
    assert text in str(info.value)


def test_image_size_and_count_caps() -> None:
    big = "data:image/jpeg;base64," + base64.b64encode(b"x" * 4000).decode()
    with pytest.raises(ValueError, match="larger than 1000 bytes"):
        decode_data_url(big, max_bytes=1000)
    assert len(decode_data_url(big, max_bytes=4000)) == 4000
    parts = [image_part(b"x")] * (MAX_IMAGES_PER_REQUEST + 1)
    with pytest.raises(ValidationError, match=f"at most {MAX_IMAGES_PER_REQUEST} images"):
        ChatCompletionRequest.model_validate(_chat(parts))
    request = ChatCompletionRequest.model_validate(_chat(parts[:2]))
    assert request.has_images()


# --- the tiny VLM and the engine --------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm_bundle():
    from visdiff.models.vlm import load_vlm

    return load_vlm(TINY_VLM)


def _image_messages(image: bytes, question: str = "Which set is this from?") -> list[dict]:
    return [{"role": "user", "content": [image_part(image), text_part(question)]}]


def test_tiny_vlm_is_deterministic_for_a_seed_and_sees_the_image(vlm_bundle) -> None:
    from visdiff.models.vlm import generate_vlm_chat, vlm_reply

    messages = _image_messages(_solid(RED))
    first = generate_vlm_chat(vlm_bundle, messages, max_tokens=16, temperature=1.0, seed=3)
    assert generate_vlm_chat(vlm_bundle, messages, max_tokens=16, temperature=1.0, seed=3) == first
    others = [
        generate_vlm_chat(vlm_bundle, messages, max_tokens=16, temperature=1.0, seed=s)[0]
        for s in (4, 5)
    ]
    assert any(o != first[0] for o in others)
    greedy = {
        vlm_reply(vlm_bundle, _image_messages(_solid(c)), max_tokens=16, temperature=0).text
        for c in (RED, BLUE, GREEN)
    }
    assert len(greedy) > 1  # the answer depends on the pixels


def test_tiny_vlm_counts_image_tokens_and_answers_text_only(vlm_bundle) -> None:
    from visdiff.models.vlm import vlm_reply

    with_image = vlm_reply(vlm_bundle, _image_messages(_solid(RED)), max_tokens=4, temperature=0)
    text_only = vlm_reply(
        vlm_bundle,
        [{"role": "user", "content": "Which set is this from?"}],
        max_tokens=4,
        temperature=0,
    )
    # The template writes one image token; the processor expands it to (32 / 8)^2 = 16.
    assert with_image.prompt_tokens - text_only.prompt_tokens == 16
    assert with_image.completion_tokens <= 4
    assert with_image.finish_reason == ("length" if with_image.completion_tokens == 4 else "stop")


def test_tiny_vlm_refuses_an_undecodable_image(vlm_bundle) -> None:
    from visdiff.models.vlm import vlm_reply

    with pytest.raises(InputError, match="image 0 of the request cannot be decoded"):
        vlm_reply(vlm_bundle, _image_messages(b"not an image"), max_tokens=4, temperature=0)


def test_is_vlm_reads_the_model_config(tmp_path) -> None:
    from visdiff.models.vlm import is_vlm

    assert is_vlm(TINY_VLM) and not is_vlm(TINY)
    for name, config in {
        "llava": {"model_type": "llava"},
        "custom": {"model_type": "my_vlm", "vision_config": {}},
        "qwen": {"model_type": "qwen2"},
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert is_vlm(str(tmp_path / "llava")) and is_vlm(str(tmp_path / "custom"))
    assert not is_vlm(str(tmp_path / "qwen"))
    missing = str(tmp_path / "nothing-here")
    assert not is_vlm(missing) and is_vlm(missing, default=True)


def _request(content: list[dict], **overrides) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return ChatCompletionRequest.model_validate({**body, **overrides})


def test_text_engine_refuses_images_and_vlm_engine_answers() -> None:
    from visdiff.serving.engines import TransformersChatEngine

    content = [image_part(_solid(BLUE)), text_part("Describe it.")]
    text_engine = TransformersChatEngine(TINY)
    with pytest.raises(InputError, match="model 'tiny' does not take images; use a VLM"):
        text_engine.chat(_request(content))
    assert text_engine.chat(_request([text_part("Describe it.")])).choices  # text parts are fine

    vlm_engine = TransformersChatEngine(TINY_VLM, served_model_name="v")
    assert vlm_engine.takes_images
    response = vlm_engine.chat(_request(content, temperature=0.5, seed=2))
    assert response.model == "v" and response.usage is not None
    again = vlm_engine.chat(_request(content, temperature=0.5, seed=2))
    assert again.choices[0].message.content == response.choices[0].message.content


# --- availability and vLLM config -------------------------------------------------------------


def test_vlm_variants_need_a_served_vlm() -> None:
    from visdiff.models.availability import check_models_available

    check_models_available(
        DescribeConfig(propose=ProposeConfig(proposer="vlm"), llm=LLMConfig(model=TINY_VLM))
    )
    with pytest.raises(ConfigError, match="propose.proposer=vlm sends images.*'tiny'"):
        check_models_available(DescribeConfig(propose=ProposeConfig(proposer="vlm")))
    external = LLMConfig(backend="external", base_url="http://x/v1", model=TINY)
    check_models_available(DescribeConfig(propose=ProposeConfig(proposer="vlm"), llm=external))


def test_vllm_serves_a_vlm_with_room_for_both_grids(tmp_path) -> None:
    from visdiff.serving.args import LLMAppArgs
    from visdiff.serving.vllm_app import vllm_llm_config_dict

    folder = tmp_path / "llava"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    args = LLMAppArgs(engine="vllm", model=str(folder), num_gpus=1)
    kwargs = vllm_llm_config_dict(args)["engine_kwargs"]
    assert kwargs["limit_mm_per_prompt"] == {"image": args.max_images_per_prompt} and (
        args.max_images_per_prompt >= 2
    )
    with pytest.raises(ConfigError, match="engine transformers"):
        vllm_llm_config_dict(LLMAppArgs(engine="vllm", model=TINY_VLM, num_gpus=1))


# --- the VLM proposer round -------------------------------------------------------------------


def test_vlm_round_sends_both_grids_and_parses_the_answer() -> None:
    from visdiff.propose.vlm import propose_vlm_round

    grid_a = image_grid([_solid(RED)] * 4, cell_px=32, max_images=4)[0]
    grid_b = image_grid([_solid(BLUE)] * 3, cell_px=32, max_images=4)[0]
    answer = "Here are the differences:\n* red objects\n* a warm colour\n* red objects"
    llm_cfg = LLMConfig(temperature=0.3, max_tokens=64)
    with serve_standin([answer]) as standin:
        client = HTTPChatClient(standin.base_url, "standin-model", max_retries=0)
        proposal = propose_vlm_round(
            client,
            2,
            grid_a,
            grid_b,
            ids_a=["a1", "a2", "a3", "a4"],
            ids_b=["b1", "b2", "b3"],
            propose_cfg=ProposeConfig(proposer="vlm", max_hypotheses_per_round=5),
            llm_cfg=llm_cfg,
            seed=10,
        )
    body = standin.requests[0]
    (message,) = body["messages"]
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["image_url", "image_url", "text"]
    sent = [decode_data_url(p["image_url"]["url"]) for p in message["content"][:2]]
    assert sent == [grid_a, grid_b]
    assert body["seed"] == 12 and body["temperature"] == 0.3 and body["max_tokens"] == 64
    assert proposal.prompt == message["content"][2]["text"]
    assert "4 photos from set A" in proposal.prompt and "3 photos from set B" in proposal.prompt
    assert proposal.hypotheses[:2] == ["red objects", "a warm colour"]
    assert proposal.prompt_source == "vlm" and proposal.round_index == 2
    assert (proposal.ids_a, proposal.ids_b) == (["a1", "a2", "a3", "a4"], ["b1", "b2", "b3"])
    assert not proposal.truncated


# --- the Serve app with a VLM (e2e) -----------------------------------------------------------

SERVED_VLM = "visdiff-vlm-test"


def test_serve_app_answers_an_image_chat(ray_session, serve_http_port) -> None:
    from visdiff.serving.engines import TransformersChatEngine
    from visdiff.serving.launch import chat_client_for, start_llm_app, stop_llm_app

    cfg = LLMConfig(
        model=TINY_VLM,
        served_model_name=SERVED_VLM,
        http_port=serve_http_port,
        route_prefix="/visdiff-vlm-test",
        app_name="visdiff-vlm-test",
        num_cpus=1,
        timeout_s=60,
    )
    base_url = start_llm_app(cfg)
    try:
        messages = _image_messages(_solid(GREEN))
        answer = chat_client_for(cfg, base_url).reply(
            messages, temperature=0.7, max_tokens=12, seed=4
        )
        local = TransformersChatEngine(TINY_VLM).chat(
            _request(messages[0]["content"], temperature=0.7, max_tokens=12, seed=4)
        )
        assert answer.text == local.choices[0].message.content  # same weights, same seed
        remote = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.jpg"}}]
        raw = httpx.post(
            f"{base_url}/chat/completions",
            json={"model": SERVED_VLM, "messages": [{"role": "user", "content": remote}]},
            timeout=30,
        )
        assert raw.status_code == 400
        assert "not a data: URL" in ErrorResponse.model_validate(raw.json()).error.message
    finally:
        stop_llm_app(cfg)
