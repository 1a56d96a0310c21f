"""Cache of LLM answers keyed by (model, messages, sampling settings), so that a rerun, a bench
resume or a refinement round never pays twice for the same question.

One small JSON file per answer, `<root>/llm-answers/<key[:2]>/<key>.json`, written atomically
through `visdiff.io.storage` (local folders and object stores alike): many actors may write at
once without locks, and two writers of one key write the same answer. A missing, vanished or
unreadable entry is a miss (the question is asked again), never an error.

The key hashes the canonical JSON of everything that decides the answer: the model identity,
the messages exactly as sent (an image travels inside them as a data: URL, so its bytes are
hashed as they are) and the sampling settings, the seed included. With temperature > 0 and no
seed, the first answer is the one reused: a cache stands for "ask once".
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from visdiff.io import storage

log = logging.getLogger(__name__)

# Bump when what is stored changes meaning: every key changes, old entries are never served.
ANSWER_KEY_VERSION = 1
ANSWERS_FOLDER = "llm-answers"
_KEY_BYTES = 20  # blake2b digest size: 40 hex chars


def answer_key(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> str:
    """Stable hex key of one question; the order of keys in dicts does not matter.

    >>> k = answer_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.0})
    >>> k == answer_key("m", [{"content": "hi", "role": "user"}], {"temperature": 0.0}), len(k)
    (True, 40)
    >>> k == answer_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0.5})
    False
    """
    canonical = json.dumps(
        {"v": ANSWER_KEY_VERSION, "model": model, "messages": messages, "sampling": sampling},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=_KEY_BYTES).hexdigest()


class AnswerCache:
    """get/put of one JSON answer by key under `root` (cache.root: a folder or s3:// prefix).

    Picklable (it holds only the root), so it travels into Ray actors as it is."""

    def __init__(self, root: str) -> None:
        if not root:
            raise ValueError("AnswerCache needs a root folder or URI (cache.root)")
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"AnswerCache({self.root!r})"

    @staticmethod
    def key(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> str:
        return answer_key(model, messages, sampling)

    def _uri(self, key: str) -> str:
        if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"answer cache key {key!r} is not a hex digest from answer_key")
        return f"{self.root}/{ANSWERS_FOLDER}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored answer, or None (never stored, vanished or unreadable: ask again)."""
        uri = self._uri(key)
        try:
            data = storage.read_bytes(uri)
        except OSError:
            return None
        try:
            answer = json.loads(data)
        except ValueError:
            log.warning("answer cache entry %s is not JSON; it is ignored", uri)
            return None
        return answer if isinstance(answer, dict) else None

    def put(self, key: str, answer: dict[str, Any]) -> None:
        """Store one answer (a JSON object); a failed write only costs the reuse."""
        uri = self._uri(key)
        data = json.dumps(answer, sort_keys=True, ensure_ascii=False).encode("utf-8")
        try:
            storage.write_bytes(uri, data)
        except OSError as exc:
            log.warning("answer cache: could not write %s (%s); the answer is not reused", uri, exc)
