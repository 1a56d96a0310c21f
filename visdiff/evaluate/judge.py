"""LLM-as-judge evaluation of ranked hypotheses (VisDiff's Acc@k).

A judge LLM scores each hypothesis against the known difference between the sets, with the
paper's rubric: 2 = it names the difference; 1 = it is more true of A than of B but broader or
narrower than the difference (a superset or a subset of it); 0 = otherwise. Acc@k is the best
score among the top k hypotheses, scaled to [0, 1]. An answer without a readable score counts as
0 and is reported as unparsed: it is never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from visdiff.propose.prompts import single_line

VALID_SCORES = (0, 1, 2)

_SYSTEM = (
    "You grade how well a proposed difference between two image sets matches the true "
    "difference. You answer with a single digit."
)

# The paper's rubric and worked example, in our words (with an example of our own).
_USER = """\
I am evaluating a system that describes how two groups of images differ. Its goal is a concept \
that is more true of the images in Group A than of the images in Group B.

The true difference:
Group A: {ground_truth_a}
Group B: {ground_truth_b}

The system proposed this concept for Group A:
{hypothesis}

Score how well the proposed concept matches the true difference of Group A:
2 = it matches: it names what sets Group A apart, possibly in other words.
1 = it partly matches: it is more true of Group A than of Group B, but it is broader than the \
true difference (a superset of it) or narrower (a subset of it).
0 = it does not match: it is unrelated, as true of Group B as of Group A, or more true of \
Group B.

Worked example: Group A is "cats sleeping on sofas" and Group B is "cats playing outdoors".
- "cats asleep on a couch" and "sleeping cats indoors" score 2.
- "a tabby cat napping on a leather sofa" (narrower) and "animals resting" (broader) score 1.
- "cats in a garden" and "dogs" score 0.

Answer with a single digit (0, 1 or 2) and nothing else."""

_DIGIT = r"(?<![\w.])([012])(?![\w]|[.,]\d)"
_LABELLED = re.compile(
    r"\b(?:score|rating|grade|answer)\b\s*(?:is|of|=|:|-)?\s*[*_`\"']*\s*" + _DIGIT, re.I
)
_FRACTION = re.compile(_DIGIT + r"\s*/\s*2\b")
_STANDALONE = re.compile(_DIGIT)
_RANGE_BEFORE = re.compile(r"\d\s*(?:[-–—/]|to)\s*$")
_RANGE_AFTER = re.compile(r"^\s*(?:[-–—/]|to)\s*\d")


def build_judge_messages(
    hypothesis: str, *, ground_truth_a: str, ground_truth_b: str
) -> list[dict[str, str]]:
    """OpenAI chat messages asking the judge for a 0/1/2 score of one hypothesis."""
    user = _USER.format(
        ground_truth_a=single_line(ground_truth_a) or "(not given)",
        ground_truth_b=single_line(ground_truth_b) or "(not given)",
        hypothesis=single_line(hypothesis) or "(empty)",
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def parse_judge_score(text: str | None) -> int | None:
    """The judge's score, or None when the answer holds none.

    A labelled score ("Score: 2") wins, then a fraction ("2/2"), then the first standalone
    0/1/2 that is not part of a range such as "0-2" or "0 to 2" (judges echo the scale).
    """
    if not text:
        return None
    for pattern in (_LABELLED, _FRACTION):
        match = pattern.search(text)
        if match is not None:
            return int(match.group(1))
    for match in _STANDALONE.finditer(text):
        before, after = text[: match.start(1)], text[match.end(1) :]
        if _RANGE_BEFORE.search(before) or _RANGE_AFTER.match(after):
            continue
        return int(match.group(1))
    return None


def _check_score(score: int | None) -> None:
    if score is not None and (isinstance(score, bool) or score not in VALID_SCORES):
        raise ValueError(f"a judge score must be 0, 1, 2 or None, got {score!r}")


def accuracy_at_k(scores: Sequence[int | None], k: int) -> float:
    """Best score/2 among the first k scores (ranked list, best hypothesis first); None is 0."""
    if k < 1:
        raise ValueError(f"k must be >= 1 for Acc@k, got {k}")
    for score in scores:
        _check_score(score)
    top = list(scores[:k])
    if not top:
        return 0.0
    return max((score or 0) for score in top) / 2.0


@dataclass(frozen=True)
class JudgeResult:
    """One judged hypothesis: its rank (1 = best), the parsed score and the raw answer."""

    hypothesis: str
    rank: int
    score: int | None
    raw: str

    def __post_init__(self) -> None:
        _check_score(self.score)


def summarize(results: Iterable[JudgeResult], ks: Sequence[int] = (1, 5)) -> dict:
    """{"acc@<k>" for each k, "acc@N" over all judged, "n_judged", "n_unparsed"}."""
    ordered = sorted(results, key=lambda result: result.rank)
    scores = [result.score for result in ordered]
    summary: dict[str, float | int] = {f"acc@{k}": accuracy_at_k(scores, k) for k in ks}
    summary["acc@N"] = accuracy_at_k(scores, max(len(scores), 1))
    summary["n_judged"] = len(scores)
    summary["n_unparsed"] = sum(score is None for score in scores)
    return summary
