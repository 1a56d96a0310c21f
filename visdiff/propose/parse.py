"""Turn a proposer LLM's answer into a clean list of hypotheses.

LLMs wrap the list we ask for in many ways (bullets, numbering, quotes, bold, preambles, group
headers, sub-points with explanations). Parsing keeps only the concept text and drops what is
clearly not a hypothesis; it never merges items (de-duplication is `dedupe_hypotheses`, done
once across rounds so the first spelling wins; `merge_near_duplicates` also merges paraphrases
by their text embeddings). An answer cut off at the token limit loses its unfinished last line
(`drop_cut_off_line`) so that half a phrase never becomes a hypothesis.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_WORDS = 25
MAX_CHARS = 200

_ANSI_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # other separators (\x0b, \u2028, ...) become spaces
_DROP_CHARS = frozenset({"\ufffd"})  # replacement character left by undecodable bytes

# "*", "-", "+" need a space after them ("**bold**" and "-3 degrees" are not bullets);
# typographic bullets and dashes may touch the text.
_BULLET = re.compile(r"^(?:[*+\-]\s+|[•–—·●○◦▪▫■□‣⁃→►▶✓✔]\s*)")
_ENUM = r"(?:\d{1,3}|[A-Za-z]|[ivxIVX]{2,4})"
_NUMBERING = re.compile(
    rf"^(?:\(\s*{_ENUM}\s*\)\s*|\d{{1,3}}[.)](?!\d)\s*|{_ENUM}[.)]\s+)",
)
_MD_HEADING = re.compile(r"^#{1,6}(?:\s|$)")
_RULE = re.compile(r"^(?:[-*_=]\s*){3,}$")
_EMPHASIS = re.compile(r"\*\*|__")
_GROUP_LABEL = re.compile(
    r"^[*_]*\s*(?:group|set)\s+[ab]\s*[*_]*\s*(?:[:：]|\s[-–—])\s*[*_]*\s*",
    re.IGNORECASE,
)
_TERM_THEN_EXPLANATION = re.compile(r"^(\*\*|__)(.+?)\1\s*(?:[:：]|\s[-–—])\s*\S")
_ITALIC = re.compile(r"^([*_`])(.+)\1$")
_PREAMBLE = re.compile(
    r"^(?:here\s+(?:are|is)\b|sure\b|certainly\b|of\s+course\b|based\s+on\b|below\s+(?:are|is)\b"
    r"|the\s+following\b|i\s+hope\b|let\s+me\s+know\b|note\s*:)",
    re.IGNORECASE,
)
_TRAILING_PUNCT = ".,;:!?…。，；：！？"
_LEADING_PUNCT = ".,;:!?"
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "`": "`", "”": "”"}
_DOUBLE_QUOTES = frozenset('"“”„«»')


def _remove_controls(text: str) -> str:
    """Drop ANSI escapes, control and invisible characters; any kind of space becomes " "."""
    text = _ANSI_ESCAPE.sub("", text)
    out = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
        elif ch not in _DROP_CHARS and unicodedata.category(ch)[0] != "C":
            out.append(ch)
    return "".join(out)


def _strip_markers(body: str) -> tuple[bool, str]:
    """Remove leading bullets / numbering (possibly stacked, "* 1. x"); say whether any was."""
    marked = False
    for _ in range(4):
        match = _BULLET.match(body) or _NUMBERING.match(body)
        if match is None:
            break
        marked = True
        body = body[match.end() :].lstrip()
    return marked, body


def _strip_quotes_and_punct(text: str) -> str:
    """Peel trailing punctuation and surrounding quotes until nothing changes."""
    while True:
        before = text
        text = text.strip().rstrip(_TRAILING_PUNCT).lstrip(_LEADING_PUNCT).strip()
        if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1]:
            text = text[1:-1]
        elif text and text[0] in _DOUBLE_QUOTES and not any(c in _DOUBLE_QUOTES for c in text[1:]):
            text = text[1:]  # an opening quote whose closing one is missing
        elif (
            text and text[-1] in _DOUBLE_QUOTES and not any(c in _DOUBLE_QUOTES for c in text[:-1])
        ):
            text = text[:-1]
        if text == before:
            return text


def _is_header(body: str) -> bool:
    plain = _EMPHASIS.sub("", body).strip().strip("*_` ").rstrip()
    return bool(_MD_HEADING.match(body)) or plain.endswith((":", "："))


def _clean_item(body: str) -> str:
    """The concept text of one list item ('' when nothing is left)."""
    body = _GROUP_LABEL.sub("", body, count=1)
    term = _TERM_THEN_EXPLANATION.match(body)
    if term is not None:  # "**Yoga poses**: many images show ..." -> "Yoga poses"
        body = term.group(2)
    body = _EMPHASIS.sub("", body)
    body = " ".join(body.split())
    while True:
        before = body
        body = _strip_quotes_and_punct(body)
        italic = _ITALIC.match(body)
        if italic is not None:
            body = italic.group(2).strip()
        if body == before:
            break
    return " ".join(body.split())


def _acceptable(item: str) -> bool:
    return (
        bool(item)
        and any(ch.isalnum() for ch in item)
        and len(item) <= MAX_CHARS
        and len(item.split()) <= MAX_WORDS
    )


def parse_hypotheses(text: str, *, max_items: int | None = None) -> list[str]:
    """Hypotheses in the order the LLM gave them (no de-duplication).

    When any line carries a list marker, only marked lines are items (unmarked lines are
    preambles or explanations) and items nested under another item are its sub-points, dropped;
    items nested under a header ("Group A:") are kept. Without markers, every non-empty line
    that is not a header or a chatty preamble is an item.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_hypotheses needs the answer text (str), got {type(text).__name__}")
    if max_items is not None and max_items < 0:
        raise ValueError(f"max_items must be >= 0 or None, got {max_items}")

    lines = []  # (indent, marked, body)
    for raw in _LINE_BREAK.split(text):
        raw = _ANSI_ESCAPE.sub("", raw).expandtabs(4)
        indent = len(raw) - len(raw.lstrip(" "))
        body = _remove_controls(raw).strip()
        if not body or _RULE.match(body):
            continue
        marked, body = _strip_markers(body)
        lines.append((indent, marked, body))

    any_marked = any(marked for _, marked, _ in lines)
    items: list[str] = []
    parents: list[tuple[int, bool]] = []  # open list levels: (indent, is_header)
    for indent, marked, body in lines:
        header = _is_header(body)
        if any_marked and not marked:
            if header:
                parents.clear()  # a new section starts a new top level
            continue
        if not any_marked and (header or _PREAMBLE.match(body)):
            continue
        if any_marked:
            while parents and parents[-1][0] >= indent:
                parents.pop()
            under_item = any(not is_header for _, is_header in parents)
            parents.append((indent, header))
            if under_item:
                continue
        if header:
            continue
        item = _clean_item(body)
        if _acceptable(item):
            items.append(item)
    return items if max_items is None else items[:max_items]


def normalize_hypothesis(text: str) -> str:
    """De-duplication key: NFKC, casefold, one space between words, no quotes or punctuation
    at the ends (brackets are kept: they are part of the phrase)."""
    key = " ".join(unicodedata.normalize("NFKC", text).casefold().split())

    def _edge(ch: str) -> bool:
        category = unicodedata.category(ch)
        return ch.isspace() or ch in "*_`~" or (category[0] == "P" and category not in ("Ps", "Pe"))

    start, end = 0, len(key)
    while start < end and _edge(key[start]):
        start += 1
    while end > start and _edge(key[end - 1]):
        end -= 1
    return " ".join(key[start:end].split())


def dedupe_hypotheses(items: Iterable[str]) -> list[str]:
    """First spelling of each normalized hypothesis, in order; items with an empty key go."""
    seen: set[str] = set()
    kept: list[str] = []
    for item in items:
        key = normalize_hypothesis(item)
        if key and key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


def drop_cut_off_line(text: str) -> str:
    """`text` without its unfinished last line, for an answer cut at the token limit
    (finish_reason "length"). When the cut fell right after a line break, nothing is lost."""
    lines = _LINE_BREAK.split(text)
    if len(lines) == 1 or lines[-1].strip():
        lines = lines[:-1]
    return "\n".join(lines)


@dataclass(frozen=True)
class Candidate:
    """One parsed hypothesis and where it came from: the proposer round (whose sampled image
    ids and prompt the caller keeps) and its position in that round's answer."""

    text: str
    round_index: int
    position: int


@dataclass
class MergedHypothesis:
    """A hypothesis kept after merging: the first spelling, and every candidate merged into it
    (itself first), so that each spelling's provenance survives."""

    text: str
    sources: list[Candidate] = field(default_factory=list)

    @property
    def rounds(self) -> list[int]:
        """Rounds that proposed it, in order, each once."""
        return list(dict.fromkeys(c.round_index for c in self.sources))


def merge_near_duplicates(
    candidates: Sequence[Candidate], embeddings: np.ndarray, *, threshold: float
) -> list[MergedHypothesis]:
    """Merge candidates that say the same thing, keeping the first spelling of each.

    `embeddings[i]` is a text embedding of `candidates[i].text` (any model; rows need not be
    normalized). A candidate joins the first kept hypothesis whose normalized text equals its
    own, else the kept hypothesis most similar to it when that cosine similarity is at least
    `threshold`; otherwise it starts a new one. Similarity is measured to each group's first
    spelling only, so a chain of small steps cannot merge unrelated phrases. Candidates whose
    normalized text is empty are dropped.
    """
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(candidates):
        raise ValueError(
            f"embeddings must be a 2-D array with one row per candidate ({len(candidates)}), "
            f"got shape {vectors.shape}"
        )
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
        raise ValueError("every embedding must be finite and non-zero")
    unit = vectors / norms

    kept: list[MergedHypothesis] = []
    kept_rows: list[int] = []
    by_key: dict[str, int] = {}
    for row, candidate in enumerate(candidates):
        key = normalize_hypothesis(candidate.text)
        if not key:
            continue
        group = by_key.get(key)
        if group is None and kept_rows:
            similarity = unit[kept_rows] @ unit[row]
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold:
                group = best
        if group is None:
            group = len(kept)
            kept.append(MergedHypothesis(candidate.text))
            kept_rows.append(row)
        by_key.setdefault(key, group)
        kept[group].sources.append(candidate)
    return kept
