"""Yes/no questions to an LLM or VLM, one per (image, hypothesis): the llm and vlm rankers.

After the paper's LLM ranker: the model is shown an image's caption (mode "caption") or the
image itself (mode "image") and asked whether the hypothesis holds; the answer, 1.0 for yes and
0.0 for no, is the image's score for that hypothesis. A row's answers over all hypotheses form
its "embedding", and scoring it against the identity matrix gives the same AUROC, p-values and
evidence as every other ranker.

`YesNoScorer` is a Ray-free batch callable (an actor of `pipeline.judging` holds one): it builds
its own client from `ClientSettings` (the key comes from the actor's environment), sends the
requests of one batch concurrently, and counts what it spent per row, so the driver can add it
up. An answer that is neither yes nor no counts as no and is counted (`unparsed`); a row whose
question fails at the endpoint is skipped with `judge_error` (as an unreadable image is).
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.errors import LLMError, first_line
from visdiff.llm.caching import AnswerStore, CachingChatClient
from visdiff.llm.client import USAGE_KEYS, ChatClient, ChatReply, ClientSettings, Messages
from visdiff.llm.protocol import image_part, text_part

MODES = ("caption", "image")
UNPARSED = "unparsed"  # int per row: answers that were neither yes nor no (counted as no)
# int per row: what the row's questions cost (calls, failed, prompt_tokens, ...).
USAGE_COLUMNS = {key: f"llm_{key}" for key in USAGE_KEYS}
JUDGE_ERROR = "judge_error"
NO_CAPTION = "no_caption: the image has no caption to ask the LLM about (rank.ranker=llm)"
NO_IMAGE = "read_error: no image bytes to show the VLM (rank.ranker=vlm)"

CAPTION_PROMPT = (
    'Here is the caption of an image: "{caption}"\n'
    'Judging by the caption, is this true of the image: "{hypothesis}"?\n'
    "Answer with a single word: yes or no."
)
IMAGE_PROMPT = 'Is this true of the image: "{hypothesis}"?\nAnswer with a single word: yes or no.'

_YES = frozenset({"yes", "y", "yeah", "yep", "true", "correct"})
_NO = frozenset({"no", "n", "nope", "false", "incorrect"})
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_WORD = re.compile(r"[a-z]+")


def parse_yes_no(text: str) -> bool | None:
    """True for yes, False for no, None when the answer says neither (or both, unclearly).

    The first word decides ("Yes, the image..."); otherwise a lone "yes" or "no" anywhere
    ("The answer is no."). Reasoning in <think> tags is ignored.

    >>> parse_yes_no("Yes."), parse_yes_no("**NO**"), parse_yes_no("The answer is yes")
    (True, False, True)
    >>> parse_yes_no("maybe"), parse_yes_no("either yes or no"), parse_yes_no("")
    (None, None, None)
    """
    words = _WORD.findall(_THINK.sub(" ", text).lower())
    if not words:
        return None
    if words[0] in _YES:
        return True
    if words[0] in _NO:
        return False
    said = {w for w in words if w in ("yes", "no")}
    if len(said) == 1:
        return said == {"yes"}
    return None


def caption_messages(caption: str, hypothesis: str) -> Messages:
    """The question about one caption (mode "caption")."""
    prompt = CAPTION_PROMPT.format(caption=caption.strip(), hypothesis=hypothesis.strip())
    return [{"role": "user", "content": prompt}]


def image_mime(data: bytes) -> str:
    """The image type of encoded bytes, by their magic number (JPEG when unknown)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def image_messages(image: bytes, hypothesis: str) -> Messages:
    """The question about one image (mode "image"): the image inline as a data: URL."""
    prompt = IMAGE_PROMPT.format(hypothesis=hypothesis.strip())
    return [{"role": "user", "content": [image_part(image, image_mime(image)), text_part(prompt)]}]


class YesNoScorer:
    """Batch callable: rows {id, set, uri, error, caption | image_bytes} -> the same rows with
    `embedding` (n, H) float32 answers, `from_cache`, `unparsed` and the usage columns; the
    image bytes are dropped. Rows that failed upstream pass through with zeros.

    `known`: hypotheses already answered, whose answers the rows carry in `embedding` (in that
    order); only the others are asked (a refinement round asks about its new hypotheses only).
    `cache`: an answer store (`visdiff.cache.answers.AnswerCache`), or None.
    """

    def __init__(
        self,
        settings: ClientSettings,
        hypotheses: list[str],
        *,
        mode: str,
        concurrency: int,
        temperature: float = 0.0,
        max_tokens: int = 4,
        seed: int | None = None,
        cache: AnswerStore | None = None,
        known: list[str] | tuple[str, ...] = (),
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"YesNoScorer mode must be one of {MODES}, got {mode!r}")
        if concurrency < 1:
            raise ValueError(f"YesNoScorer concurrency must be >= 1, got {concurrency}")
        if not hypotheses:
            raise ValueError("YesNoScorer needs at least one hypothesis")
        self.hypotheses = list(hypotheses)
        self.mode = mode
        self.sampling = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
        position = {h: i for i, h in enumerate(known)}
        # (column in the output, column in the rows' known answers or -1 when asked now)
        self._columns = [(j, position.get(h, -1)) for j, h in enumerate(self.hypotheses)]
        self._num_known = len(known)
        inner = settings.build()
        self.client: ChatClient = (
            CachingChatClient(inner, cache, model_id=settings.model_identity)
            if cache is not None
            else inner
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="yesno")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.client, "close", None)
        if callable(close):
            close()

    def _messages(self, content: Any, hypothesis: str) -> Messages:
        if self.mode == "caption":
            return caption_messages(str(content), hypothesis)
        return image_messages(bytes(content), hypothesis)

    def _ask(self, content: Any, hypothesis: str) -> ChatReply:
        return self.client.reply(self._messages(content, hypothesis), **self.sampling)

    def _contents(self, batch: dict[str, Any], errors: list[str]) -> list[Any]:
        """What each row is asked about; rows without it get their error here (when there is
        a question to ask: answers known from a previous round need no content)."""
        n = len(errors)
        column = schema.CAPTION if self.mode == "caption" else schema.IMAGE_BYTES
        values = list(batch[column]) if column in batch else [None] * n
        missing = NO_CAPTION if self.mode == "caption" else NO_IMAGE
        asking = any(k < 0 for _, k in self._columns)
        out: list[Any] = []
        for i, value in enumerate(values):
            if self.mode == "caption":
                value = str(value).strip() if value is not None else ""
            elif value is None:
                value = b""
            if asking and not errors[i] and len(value) == 0:
                errors[i] = missing
            out.append(value)
        return out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch[schema.ID])
        errors = [str(e) for e in batch.get(schema.ERROR, [""] * n)]
        contents = self._contents(batch, errors)
        answers = np.zeros((n, len(self.hypotheses)), dtype=np.float32)
        if self._num_known:
            before = np.asarray(batch[schema.EMBEDDING], dtype=np.float32).reshape(n, -1)
            for j, k in self._columns:
                if k >= 0:
                    answers[:, j] = before[:, k]
        asked: dict[tuple[int, int], Future[ChatReply]] = {}
        for i in range(n):
            if errors[i]:
                continue
            for j, k in self._columns:
                if k < 0:
                    asked[(i, j)] = self._pool.submit(self._ask, contents[i], self.hypotheses[j])
        usage = {key: np.zeros(n, dtype=np.int64) for key in USAGE_KEYS}
        unparsed = np.zeros(n, dtype=np.int64)
        for (i, j), future in asked.items():
            try:
                reply = future.result()
            except LLMError as exc:
                usage["calls"][i] += 1
                usage["failed"][i] += 1
                errors[i] = errors[i] or f"{JUDGE_ERROR}: {first_line(exc, 300)}"
                continue
            if reply.cached:
                usage["cached"][i] += 1
            else:
                usage["calls"][i] += 1
                usage["prompt_tokens"][i] += reply.prompt_tokens or 0
                usage["completion_tokens"][i] += reply.completion_tokens or 0
            verdict = parse_yes_no(reply.text)
            if verdict is None:
                unparsed[i] += 1
            answers[i, j] = 1.0 if verdict else 0.0
        failed = np.asarray([bool(e) for e in errors], dtype=bool)
        answers[failed] = 0.0
        from_cache = (usage["cached"] > 0) & (usage["calls"] == 0)
        out = {k: v for k, v in batch.items() if k not in (schema.IMAGE_BYTES, schema.EMBEDDING)}
        out.update(
            {
                schema.ERROR: np.asarray(errors, dtype=object),
                schema.EMBEDDING: answers,
                schema.FROM_CACHE: from_cache,
                UNPARSED: unparsed,
                **{USAGE_COLUMNS[key]: usage[key] for key in USAGE_KEYS},
            }
        )
        return out
