"""Prompt templates for the proposer LLM.

Templates are looked up in an explicit registry so a config string can only ever select one of
the texts below (never evaluated or used as an attribute name). Captions come from users or
models, so each is squeezed onto one line before it is placed in the prompt: a caption cannot
add lines that would read as new instructions or as captions of the other group.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from visdiff.errors import ConfigError, InputError

# Everything str.splitlines() would break on, plus tab and unit separator: become spaces.
_BREAKS = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x1f\x85\u2028\u2029")
_SPACE_RUNS = re.compile(r" {2,}")


@dataclass(frozen=True)
class PromptTemplate:
    """One proposer prompt: a system message and instructions around the two caption lists.

    `instructions` and `answer_format` may use `{max_hypotheses}`; captions are never passed
    through `str.format`, so braces inside captions are harmless.
    """

    system: str
    instructions: str
    answer_format: str


_SYSTEM = (
    "You compare two groups of images through their captions and name visual differences "
    "between them. You answer only with the requested list."
)

_CLIP_FRIENDLY = PromptTemplate(
    system=_SYSTEM,
    instructions=(
        "Below are captions of images from two groups, Group A and Group B. Find visual "
        "concepts that are more true of the images in Group A than of the images in Group B.\n"
        "Each concept must be short (about 2 to 6 words) and describe something visible that "
        "an image-text model such as CLIP could check in a single image, for example "
        '"people doing handstands" or "sunset lighting". Prefer concrete objects, actions, '
        "settings, styles and lighting over abstract ideas. Do not mention the groups or the "
        "captions in a concept."
    ),
    answer_format=(
        "Answer with a bulleted list of at most {max_hypotheses} concepts that are more true "
        'of Group A than of Group B. Start every line with "* ", put one concept per line and '
        "add no explanations, numbering or other text."
    ),
)

_DESCRIPTIVE = PromptTemplate(
    system=_SYSTEM,
    instructions=(
        "Below are captions of images from two groups, Group A and Group B. Describe the ways "
        "in which the images in Group A differ from the images in Group B: what is more often "
        "true of Group A.\n"
        "Each difference should be one descriptive phrase of up to about 15 words that names "
        'what is visible, for example "people balancing upside down on their hands outdoors" '
        'or "scenes lit by a low, warm evening sun". Do not mention the groups or the captions '
        "in a phrase."
    ),
    answer_format=(
        "Answer with a bulleted list of at most {max_hypotheses} phrases that are more true "
        'of Group A than of Group B. Start every line with "* ", put one phrase per line and '
        "add no explanations, numbering or other text."
    ),
)

_TEMPLATES: dict[str, PromptTemplate] = {
    "clip_friendly": _CLIP_FRIENDLY,
    "descriptive": _DESCRIPTIVE,
}


def list_prompts() -> list[str]:
    """Names accepted by `propose.prompt`, sorted."""
    return sorted(_TEMPLATES)


def get_prompt(name: str) -> PromptTemplate:
    """The template registered under `name`; ConfigError naming the valid names otherwise."""
    template = _TEMPLATES.get(name) if isinstance(name, str) else None
    if template is None:
        raise ConfigError(
            f"unknown prompt template {name!r} (config key 'propose.prompt'); "
            f"valid names: {', '.join(list_prompts())}"
        )
    return template


def single_line(text: str) -> str:
    """`text` on one line: line breaks and tabs become spaces, other control and invisible
    characters are dropped, runs of spaces collapse, ends are stripped; otherwise verbatim."""
    out = []
    for ch in str(text):
        if ch in _BREAKS:
            out.append(" ")
        elif unicodedata.category(ch)[0] != "C":
            out.append(ch)
    return _SPACE_RUNS.sub(" ", "".join(out)).strip()


def _caption_block(label: str, captions: list[str]) -> str:
    lines = [f"{label}:"]
    for number, caption in enumerate(captions, start=1):
        lines.append(f"{number}. {single_line(caption) or '(no caption)'}")
    return "\n".join(lines)


def build_proposer_messages(
    template: str,
    captions_a: list[str],
    captions_b: list[str],
    *,
    max_hypotheses: int,
) -> list[dict[str, str]]:
    """OpenAI chat messages (system + user) asking for differences that favour group A."""
    prompt = get_prompt(template)
    if max_hypotheses < 1:
        raise ConfigError(
            f"config key 'propose.max_hypotheses_per_round' must be >= 1, got {max_hypotheses}"
        )
    for label, captions in (("A", captions_a), ("B", captions_b)):
        if not captions:
            raise InputError(
                f"no captions for set {label}: the proposer needs at least one captioned image "
                "per set (check that the set is not empty and that captioning succeeded)"
            )
    user = "\n\n".join(
        [
            prompt.instructions.format(max_hypotheses=max_hypotheses),
            _caption_block("Group A", captions_a),
            _caption_block("Group B", captions_b),
            prompt.answer_format.format(max_hypotheses=max_hypotheses),
        ]
    )
    return [
        {"role": "system", "content": prompt.system},
        {"role": "user", "content": user},
    ]
