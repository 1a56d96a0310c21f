"""OpenAI chat-completions wire format (the subset VisDiff uses), as pydantic v2 models.

Field names mirror OpenAI's so that any compatible server (our Serve app, vLLM, OpenAI itself)
can sit behind the same client. Requests ignore unknown fields, as OpenAI-compatible servers do;
the request validators encode what *our* server supports (one choice, no streaming).

A message's content is a string or a list of parts (`text_part`, `image_part`), as in OpenAI's
vision API. Images travel inline as base64 `data:` URLs: our server never fetches a remote URL
(a run's images need no second network path, and a server that fetches is an open proxy), and
each image's decoded size is capped so that one request cannot exhaust a replica's memory.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
    field_validator,
    model_validator,
)

Role = Literal["system", "developer", "user", "assistant", "tool"]

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # per image, decoded (OpenAI's own limit)
MAX_IMAGES_PER_REQUEST = 16
_DATA_URL_HINT = "data:image/jpeg;base64,<...>"


def text_part(text: str) -> dict[str, Any]:
    """A text content part."""
    return {"type": "text", "text": text}


def image_part(data: bytes, mime: str = "image/jpeg") -> dict[str, Any]:
    """An image content part carrying `data` inline as a base64 data: URL."""
    encoded = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{encoded}"}}


def decode_data_url(url: str, *, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a base64 `data:` URL; ValueError (one line, with the fix) otherwise.

    >>> decode_data_url("data:image/png;base64,aGk=")
    b'hi'
    """
    if not url.startswith("data:"):
        shown = url if len(url) <= 60 else url[:57] + "..."
        raise ValueError(
            f"image_url.url {shown!r} is not a data: URL; this server does not fetch images: "
            f"send the bytes inline as {_DATA_URL_HINT}"
        )
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ValueError(f"image_url.url must be a base64 data: URL such as {_DATA_URL_HINT}")
    payload = "".join(payload.split())  # line-wrapped base64 is still base64
    if len(payload) // 4 * 3 > max_bytes + 2:  # checked before decoding anything
        raise ValueError(
            f"image is larger than {max_bytes} bytes (about {len(payload) // 4 * 3}); "
            "send a smaller or more compressed image"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image_url.url holds invalid base64 data") from None
    if not data:
        raise ValueError("image_url.url holds no image data")
    if len(data) > max_bytes:
        raise ValueError(f"image is larger than {max_bytes} bytes ({len(data)})")
    return data


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"] = "text"
    text: str


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    """An image part; validation decodes it once (`data`), so a bad image fails the request."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url"] = "image_url"
    image_url: ImageURL
    _data: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _decode(self) -> ImagePart:
        self._data = decode_data_url(self.image_url.url)
        return self

    @property
    def data(self) -> bytes:
        return self._data


ContentPart = TextPart | ImagePart
_PART_TYPES: dict[str, type[BaseModel]] = {"text": TextPart, "image_url": ImagePart}


def _content_part(index: int, value: Any) -> ContentPart:
    if isinstance(value, (TextPart, ImagePart)):
        return value
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in _PART_TYPES:
        raise ValueError(
            f"content part {index} must be an object with type 'text' or 'image_url', "
            f"got {kind if kind is not None else type(value).__name__!r}"
        )
    try:
        return _PART_TYPES[kind].model_validate(value)  # type: ignore[return-value]
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        detail = (
            "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in errors())
            if callable(errors)
            else str(exc)
        )
        raise ValueError(f"content part {index} ({kind}): {detail}") from None


class ChatMessage(BaseModel):
    """One message; content may be null in OpenAI answers (refusals, tool calls), a string, or
    a list of text and image parts."""

    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str | list[ContentPart] | None = None

    @field_validator("content", mode="plain")
    @classmethod
    def _content(cls, value: Any) -> str | list[ContentPart] | None:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("content must be a string or a list of content parts")
        return [_content_part(i, part) for i, part in enumerate(value)]

    @field_serializer("content")
    def _dump_content(self, value: str | list[ContentPart] | None) -> Any:
        if isinstance(value, list):
            return [part.model_dump(exclude_none=True) for part in value]
        return value

    def text(self) -> str:
        """The text of the message; text parts are joined by newlines, images left out."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    def images(self) -> list[bytes]:
        """The decoded bytes of every image part, in order."""
        if not isinstance(self.content, list):
            return []
        return [p.data for p in self.content if isinstance(p, ImagePart)]


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions body."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage]
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None

    @field_validator("messages")
    @classmethod
    def _messages_non_empty(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not value:
            raise ValueError("messages must hold at least one message")
        return value

    @field_validator("messages")
    @classmethod
    def _few_images(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        count = sum(len(m.images()) for m in value)
        if count > MAX_IMAGES_PER_REQUEST:
            raise ValueError(
                f"a request may hold at most {MAX_IMAGES_PER_REQUEST} images, got {count}; "
                "combine them into a grid or send several requests"
            )
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature_range(cls, value: float) -> float:
        if not 0.0 <= value <= 2.0:
            raise ValueError(f"temperature must lie in [0, 2], got {value}")
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p_range(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {value}")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"max_tokens must be >= 1, got {value}")
        return value

    @field_validator("n")
    @classmethod
    def _single_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                f"n must be 1 (this server returns one choice per request), got {value}"
            )
        return value

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool) -> bool:
        if value:
            raise ValueError("stream must be false (this server does not stream)")
        return value

    def has_images(self) -> bool:
        return any(m.images() for m in self.messages)

    def stop_strings(self) -> list[str]:
        """`stop` as a list, empty strings dropped (OpenAI accepts a string or a list)."""
        if self.stop is None:
            return []
        items = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in items if s]


class Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    index: int = 0
    message: ChatMessage
    finish_reason: str | None = None


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(BaseModel):
    """Non-streaming answer; `usage` is optional when parsing other servers' answers."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=_completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "visdiff"
    root: str | None = None  # the underlying model (hub id / folder), as vLLM reports it


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
