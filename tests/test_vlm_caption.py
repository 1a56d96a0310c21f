"""The GPU captioning path (VLM on vLLM through ray.data.llm) around the engine itself, which
cannot run here: request building, result mapping, processor config, the missing-vLLM error."""

from __future__ import annotations

import base64
import importlib.util

import pytest

from visdiff import schema
from visdiff.config import CaptionerConfig, load_config
from visdiff.errors import ModelUnavailableError
from visdiff.models.availability import check_engines_installed
from visdiff.stages.vlm_caption import (
    caption_request,
    caption_result,
    processor_config_kwargs,
)


def test_request_inlines_the_image_and_prompt():
    row = {schema.ID: "a/1", schema.URI: "s3://b/x.tar#k.png", schema.IMAGE_BYTES: b"\x89PNG..."}
    request = caption_request(row, prompt="Describe it.", max_new_tokens=20)
    image_part, text_part = request["messages"][0]["content"]
    prefix, payload = image_part["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64" and base64.b64decode(payload) == b"\x89PNG..."
    assert text_part == {"type": "text", "text": "Describe it."}
    assert request["sampling_params"] == {"temperature": 0.0, "max_tokens": 20}
    assert request[schema.ID] == "a/1"


def test_result_maps_answers_and_per_row_errors():
    ok = caption_result({schema.ID: "a/1", "generated_text": "  a dog\n on grass "})
    assert ok == {schema.ID: "a/1", schema.GENERATED_CAPTION: "a dog on grass", schema.ERROR: ""}
    failed = caption_result({schema.ID: "a/2", "generated_text": "", "__inference_error__": "OOM"})
    assert failed[schema.GENERATED_CAPTION] == "" and failed[schema.ERROR] == "caption_error: OOM"


def test_processor_config_is_accepted_by_ray_data_llm():
    from ray.data.llm import vLLMEngineProcessorConfig

    cfg = CaptionerConfig(
        kind="vllm", model="Qwen/Qwen2.5-VL-3B-Instruct", num_gpus=1, precision="fp16"
    )
    kwargs = processor_config_kwargs(cfg)
    config = vLLMEngineProcessorConfig(**kwargs)  # Ray's own validation of every field
    assert config.model_source == cfg.model
    assert kwargs["engine_kwargs"]["dtype"] == "float16"
    with pytest.raises(ModelUnavailableError, match="num_gpus"):
        processor_config_kwargs(CaptionerConfig(kind="vllm", model="x", num_gpus=0))


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None,
    reason="checks the message shown when vLLM is absent",
)
def test_missing_vllm_is_reported_before_anything_starts():
    config = load_config(None, ["data.set_a=/a", "data.set_b=/b", "models=gpu"])
    with pytest.raises(ModelUnavailableError, match=r"pip install -e '\.\[gpu\]'"):
        check_engines_installed(config)
    config = load_config(None, ["data.set_a=/a", "data.set_b=/b", "captioner.kind=vllm"])
    with pytest.raises(ModelUnavailableError, match="captioner.kind=vllm"):
        check_engines_installed(config)
    check_engines_installed(load_config(None, ["data.set_a=/a", "data.set_b=/b"]))  # tiny: fine
