"""Keyphrase-contrast proposer: the hypotheses are the phrases of the captions that are
over-represented in one set versus the other, for runs with no LLM (propose.proposer=keyphrase).

Phrases are 1-3 word runs of content words (function words, caption boilerplate such as "stock
photo" and light verbs such as "doing" break a run), counted once per caption. They are scored
with the log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi and Quinn 2008,
"Fightin' Words"), the prior taken from both sets pooled: its z-score shrinks rare phrases
towards zero instead of ranking a phrase seen once in A and never in B first.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from visdiff.config import ProposeConfig
from visdiff.errors import InputError
from visdiff.propose.proposer import Proposal, RoundInput

MAX_WORDS = 3
# English function words (articles, pronouns, prepositions, auxiliaries, quantifiers); our own
# short list, as sklearn's costs seconds of import at start-up.
FUNCTION_WORDS = frozenset(
    "a an the and or but nor if then than so as of at by for from in into onto on off out over "
    "under up down to with within without about above below across after before behind beside "
    "besides between beyond during near through toward towards upon via while along around "
    "against among top front back side middle next inside outside "
    "i me my we us our you your he him his she her it its they them their this that these those "
    "who whom whose which what where when why how there here "
    "is am are was were be been being has have had having do did done can could may might "
    "must shall should will would "
    "all any both each every few many more most much no not only other own same some such "
    "very too also just one two three four five six seven eight nine ten several lots lot".split()
)
# Words that are not about what an image shows: caption-site boilerplate and light verbs.
CAPTION_FILLER = frozenset(
    "stock photo photos photograph photography image images picture pictures illustration "
    "vector royalty free shows showing shown depicts doing does sits sitting stands standing "
    "looking looks holding wearing taking making view".split()
)
STOP_WORDS = FUNCTION_WORDS | CAPTION_FILLER
_SEGMENTS = re.compile(r"[^a-z'\s-]+")  # digits and punctuation end a phrase


@dataclass(frozen=True)
class Keyphrase:
    phrase: str  # as the captions most often write it
    z_score: float  # > 0: over-represented in A; < 0: in B
    count_a: int  # captions of A that contain it
    count_b: int


def _stem(word: str) -> str:
    """A plural "s" cut ("circles" -> "circle"), so that both forms count as one phrase."""
    plural = len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is"))
    return word[:-1] if plural else word


def caption_phrases(caption: str, *, max_words: int = MAX_WORDS) -> dict[str, str]:
    """The distinct 1..max_words-grams of content-word runs in one caption: key (plurals cut)
    -> the words as written.

    >>> sorted(caption_phrases("Two women doing yoga on snowy mountains, stock photo"))
    ['mountain', 'snowy', 'snowy mountain', 'women', 'yoga']
    """
    phrases: dict[str, str] = {}
    for segment in _SEGMENTS.split(caption.lower()):
        run: list[str] = []
        for word in [*segment.split(), ""]:  # "" flushes the last run
            word = word.strip("'-")
            if len(word) >= 2 and word not in STOP_WORDS:
                run.append(word)
                continue
            for n in range(1, min(max_words, len(run)) + 1):
                for i in range(len(run) - n + 1):
                    words = run[i : i + n]
                    phrases[" ".join(map(_stem, words))] = " ".join(words)
            run = []
    return phrases


@dataclass
class PhraseCounts:
    """Per phrase key, the number of captions that contain it, and how they write it."""

    captions: Counter[str] = field(default_factory=Counter)
    written: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, caption: str) -> None:
        for key, text in caption_phrases(caption).items():
            self.captions[key] += 1
            self.written.setdefault(key, Counter())[text] += 1


def phrase_counts(captions: Iterable[str]) -> PhraseCounts:
    """Caption counts of every phrase of `captions` (each caption counts a phrase once)."""
    counts = PhraseCounts()
    for caption in captions:
        counts.add(caption)
    return counts


def log_odds_z(
    counts_a: Counter[str], counts_b: Counter[str], *, prior_weight: float = 1.0
) -> dict[str, float]:
    """z-score of the log-odds ratio of each phrase, A versus B, with an informative Dirichlet
    prior alpha_w = prior_weight * (count_a + count_b) (Monroe et al. 2008, eq. 16-22).

    >>> z = log_odds_z(Counter(yoga=8, mountain=9), Counter(yoga=1, mountain=9))
    >>> round(z["yoga"], 2), round(z["mountain"], 2)  # "mountain": 9 of 17 phrases vs 9 of 10
    (1.33, -1.95)
    """
    if prior_weight <= 0:
        raise ValueError(f"prior_weight must be > 0, got {prior_weight}")
    n_a, n_b = sum(counts_a.values()), sum(counts_b.values())
    alpha_0 = prior_weight * (n_a + n_b)
    scores = {}
    for phrase in counts_a.keys() | counts_b.keys():
        y_a, y_b = counts_a[phrase], counts_b[phrase]
        alpha = prior_weight * (y_a + y_b)
        if alpha == alpha_0:  # the only phrase of both sets: nothing to contrast
            scores[phrase] = 0.0
            continue
        delta = math.log((y_a + alpha) / (n_a + alpha_0 - y_a - alpha)) - math.log(
            (y_b + alpha) / (n_b + alpha_0 - y_b - alpha)
        )
        scores[phrase] = delta / math.sqrt(1.0 / (y_a + alpha) + 1.0 / (y_b + alpha))
    return scores


def _subsumed(counts: dict[str, tuple[int, int]]) -> set[str]:
    """Phrases inside a longer phrase seen in exactly the same captions counts ("lotus" when
    every "lotus" is a "lotus position"): the longer one says more."""
    out = set()
    for phrase, seen in counts.items():
        words = phrase.split()
        for n in range(1, len(words)):
            for i in range(len(words) - n + 1):
                part = " ".join(words[i : i + n])
                if counts.get(part) == seen:
                    out.add(part)
    return out


def contrast_keyphrases(
    captions_a: list[str],
    captions_b: list[str],
    *,
    top_k: int = 10,
    min_count: int = 2,
    prior_weight: float = 1.0,
) -> tuple[list[Keyphrase], list[Keyphrase]]:
    """The `top_k` phrases most over-represented in A, and in B, best first. A phrase must occur
    in at least `min_count` captions of both sets together; ties go by the phrase text."""
    counts_a, counts_b = phrase_counts(captions_a), phrase_counts(captions_b)
    in_a, in_b = counts_a.captions, counts_b.captions
    pair = {p: (in_a[p], in_b[p]) for p in in_a.keys() | in_b.keys()}
    pair = {p: seen for p, seen in pair.items() if sum(seen) >= min_count}
    dropped = _subsumed(pair)
    z = log_odds_z(in_a, in_b, prior_weight=prior_weight)

    def phrase(key: str) -> Keyphrase:
        written = counts_a.written.get(key, Counter()) + counts_b.written.get(key, Counter())
        text = min(written, key=lambda t: (-written[t], t))
        return Keyphrase(text, z[key], *pair[key])

    kept = {key: phrase(key) for key in pair if key not in dropped}
    more_a = sorted(
        (k for k in kept.items() if k[1].z_score > 0), key=lambda k: (-k[1].z_score, k[0])
    )
    more_b = sorted(
        (k for k in kept.items() if k[1].z_score < 0), key=lambda k: (k[1].z_score, k[0])
    )
    return _distinct(more_a, top_k), _distinct(more_b, top_k)


def _distinct(ranked: list[tuple[str, Keyphrase]], top_k: int) -> list[Keyphrase]:
    """The first `top_k` phrases, best first, skipping one whose words hold or are held by an
    earlier pick's ("small red circle" after "red circle"), so that each is another concept.

    >>> keys = ("red circle", "red", "small red circle", "white")
    >>> [k.phrase for k in _distinct([(p, Keyphrase(p, 1.0, 1, 0)) for p in keys], 5)]
    ['red circle', 'white']
    """
    picked: list[Keyphrase] = []
    seen: list[frozenset[str]] = []
    for key, keyphrase in ranked:
        words = frozenset(key.split())
        if any(words <= other or other <= words for other in seen):
            continue
        picked.append(keyphrase)
        seen.append(words)
        if len(picked) == top_k:
            break
    return picked


def _table(title: str, phrases: list[Keyphrase]) -> list[str]:
    lines = [f"# {title} (z-score, captions of A, captions of B)"]
    lines += [f"{k.phrase}\t{k.z_score:+.2f}\t{k.count_a}\t{k.count_b}" for k in phrases]
    return lines


def propose_keyphrases(
    rounds: list[RoundInput], cfg: ProposeConfig
) -> tuple[list[Proposal], list[str]]:
    """One proposal from the captions of every round's sampled images (each image once):
    `propose.max_hypotheses_per_round` phrases per direction, those more of A first."""
    captions: dict[str, dict[str, str]] = {"a": {}, "b": {}}
    for r in rounds:
        captions["a"].update(zip(r.ids_a, r.captions_a, strict=True))
        captions["b"].update(zip(r.ids_b, r.captions_b, strict=True))
    more_a, more_b = contrast_keyphrases(
        list(captions["a"].values()),
        list(captions["b"].values()),
        top_k=cfg.max_hypotheses_per_round,
    )
    hypotheses = [k.phrase for k in (*more_a, *more_b)]
    if not hypotheses:
        n_a, n_b = len(captions["a"]), len(captions["b"])
        raise InputError(
            f"the keyphrase proposer (propose.proposer=keyphrase) found no phrase more frequent in the "
            f"captions of one set than in the other's ({n_a} + {n_b} sampled captions; a phrase "
            "needs 2 or more): sample more images (propose.num_samples) or configure an LLM"
        )
    raw = "\n".join(_table("more of A", more_a) + _table("more of B", more_b))
    proposal = Proposal(
        round_index=0,
        raw_text=raw,
        hypotheses=hypotheses,
        ids_a=list(captions["a"]),
        ids_b=list(captions["b"]),
        prompt_source="keyphrase",
        captions_a=list(captions["a"].values()),
        captions_b=list(captions["b"].values()),
    )
    return [proposal], hypotheses
