"""Prompt templates for the proposer LLM.

A template is one user message with named placeholders (`PLACEHOLDERS`), plus an optional system
message. The built-in ones are looked up in an explicit registry (`propose.prompt`); any other
text can be loaded from a file (`propose.prompt_file`), so the published VisDiff prompt can be
run verbatim. Placeholders are checked with `string.Formatter` before use: only the names below
are filled, nothing is evaluated or looked up as an attribute.

The refinement prompt (`build_refine_messages`, propose.refine_rounds) is built in only: it shows
the best ranked hypotheses with their AUROCs and captions of the A images each one misses, then
the same phrasing rules as clip_friendly. So is the paired prompt (`build_paired_messages`,
propose.proposer=paired): the two captions of each pair side by side.

Captions come from users or models, so each is squeezed onto one line before it is placed in the
prompt: a caption cannot add lines that would read as new instructions or as captions of the
other group. A captioner that echoes its own prompt ("Describe this image in detail. A dog ...")
has that echo removed first. A caption longer than `propose.max_caption_chars` is then cut at a
word boundary and ends in "…" (`llm_captions` counts the cut ones), so one runaway caption cannot
fill the LLM's context.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from visdiff.config import ProposeConfig
from visdiff.errors import ConfigError, InputError

# Everything str.splitlines() would break on, plus tab and unit separator: become spaces.
_BREAKS = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x1f\x85\u2028\u2029")
_SPACE_RUNS = re.compile(r" {2,}")
ELLIPSIS = "…"

PLACEHOLDERS: dict[str, str] = {
    "captions_a": 'captions of group A, one numbered line each ("1. a dog on a sofa")',
    "captions_b": "captions of group B, the same way",
    "text": 'every caption, one line each: "Group A: ..." lines, then "Group B: ..." lines '
    "(the layout and name the published VisDiff prompts use)",
    "num_hypotheses": "how many concepts to ask for (propose.max_hypotheses_per_round)",
}
_FIX = (
    "placeholders are {captions_a}, {captions_b}, {text}, {num_hypotheses}; "
    "write a literal brace as {{ or }}"
)


@dataclass(frozen=True)
class PromptTemplate:
    """One proposer prompt: `user` holds the placeholders; `system` is sent as is (or not at
    all when None). `source` names where the text came from, for messages and run records."""

    user: str
    system: str | None
    source: str


_SYSTEM = (
    "You compare two groups of images through their captions and name visual differences "
    "between them. You answer only with the requested list."
)

# Both built-in prompts show the captions first (A, then B), then the task, as the paper does.
_CAPTIONS_FIRST = """\
Below are captions that an image captioning model wrote for two groups of images.

Group A:
{captions_a}

Group B:
{captions_b}

"""

# How to phrase a concept for CLIP, with worked corrections of bad phrasings: shared by the
# clip_friendly proposer prompt and the refinement prompt.
_CLIP_RULES = """\
A CLIP model will check each concept against every single image, so \
write each one the way you would caption a photo: a short noun phrase naming something you can \
see, such as "a child flying a kite", "a street at night", "a blurry photo", "food seen from \
above" or "a calm mood".

Rules:
- Describe the images, not the captions: "short captions" or "captions mentioning a dog" are wrong.
- One concept per line; never join several concepts into one.
- Do not open with "presence of", "more", "images of", "images with" or "photos showing": name \
the content itself.
- Do not list examples or alternatives, neither in parentheses nor after "like", "such as" or \
"including".

Bad phrasings and their fixes:
- "presence of baby animals" -> "baby animals"
- "various outdoor settings like beaches, parks and deserts" -> "outdoor settings"
- "images of kitchen tools (e.g. knife, whisk, pan)" -> "kitchen tools"
- "Birds (sparrow, crow, pigeon)" -> "birds"
- "more colourful images" -> "colourful images"
- "photos showing people playing with their pets" -> "people playing with pets"

Answer with a bulleted list of exactly {num_hypotheses} concepts that are more true of Group A \
than of Group B: start every line with "* ", put one concept per line and add no numbering, \
explanations or other text."""

# The paper's design in our words: captions first, then the task (N distinct concepts more true
# of A), phrased as captions a CLIP model can check, with worked corrections of bad phrasings.
_CLIP_FRIENDLY = (
    _CAPTIONS_FIRST
    + """\
I want to learn what sets the images of Group A apart from the images of Group B.

Name {num_hypotheses} distinct concepts that are true more often of the images in Group A than \
of the images in Group B. """
    + _CLIP_RULES
)

_DESCRIPTIVE = (
    _CAPTIONS_FIRST
    + """\
Describe {num_hypotheses} distinct ways in which the images in Group A differ from the images \
in Group B: what is true more often of Group A. Write each difference as one descriptive phrase \
of up to about 15 words that names what is visible, for example "people balancing upside down \
on their hands outdoors" or "scenes lit by a low, warm evening sun". Describe the images, not \
the captions, and do not mention the groups in a phrase.

Answer with a bulleted list of {num_hypotheses} phrases that are more true of Group A than of \
Group B: start every line with "* ", put one phrase per line and add no numbering, explanations \
or other text."""
)

_TEMPLATES: dict[str, PromptTemplate] = {
    "clip_friendly": PromptTemplate(_CLIP_FRIENDLY, _SYSTEM, "built-in 'clip_friendly'"),
    "descriptive": PromptTemplate(_DESCRIPTIVE, _SYSTEM, "built-in 'descriptive'"),
}


# Refinement (propose.refine_rounds): the best concepts so far with their scores and the images
# of A that each one misses, then the same rules as clip_friendly. Built in only: its layout is
# ours (no published counterpart), so no file override.
_REFINE = (
    """\
Concepts that may be true more often of the images in Group A than of the images in Group B \
were each checked by a CLIP model against every image. A concept's score is its AUROC: the \
chance that a random image of Group A matches it better than a random image of Group B (0.5: no \
difference; 1.0: every image of A matches it better than every image of B).

The best concepts so far, each with captions of the Group A images it matches worst:

{scored}

Name {num_hypotheses} new concepts that set Group A apart from Group B better than these: make a \
concept sharper, or broad enough to cover the Group A images it misses, or name what those \
images have in common instead. Do not repeat a concept listed above. """
    + _CLIP_RULES
)
REFINE = PromptTemplate(_REFINE, _SYSTEM, "built-in 'refine'")


# Paired sets (propose.proposer=paired): both images of a pair were made from the same prompt by
# two generative models, so the LLM reads each pair side by side and looks for what differs
# consistently, then the same phrasing rules as clip_friendly. Built in only, like refine.
_PAIRED_SYSTEM = (
    "You compare the outputs of two image generators through captions of their images and name "
    "the visual differences between them. You answer only with the requested list."
)
_PAIRED = (
    """\
The same prompt was given to two image generation models, model A and model B, once per pair \
below. An image captioning model described both images of each pair: "A" is the image that \
model A made, "B" the one model B made from the same prompt.

{pairs}

Group A is every image of model A; Group B is every image of model B. Within a pair the content \
asked for is the same, so look for what differs between A and B again and again across the \
pairs (style, composition, colour, detail, what is left out or added), not for what one prompt \
asked for.

Name {num_hypotheses} distinct concepts that are true more often of the A images than of their B \
partners. """
    + _CLIP_RULES
)
PAIRED = PromptTemplate(_PAIRED, _PAIRED_SYSTEM, "built-in 'paired'")


@dataclass(frozen=True)
class RefineItem:
    """One concept shown to the refining LLM: its AUROC and captions of A images it misses."""

    hypothesis: str
    auroc: float
    misses: list[str]


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


def check_template(text: str, where: str) -> None:
    """ConfigError (one line, naming `where` and the fix) unless `text` uses only our
    placeholders, plainly (no index, attribute, conversion or format spec), and shows captions."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid template ({exc}); {_FIX}") from None
    names = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            shown = (
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
            raise ConfigError(f"{where}: unknown placeholder {shown}; {_FIX}")
        names.add(name)
    if "text" not in names and not {"captions_a", "captions_b"} <= names:
        raise ConfigError(
            f"{where}: the template never shows the captions; add {{text}}, or both "
            "{captions_a} and {captions_b}"
        )


def load_prompt_file(path: str | Path) -> PromptTemplate:
    """A user template from a UTF-8 text file: the whole file is the user message (no system
    message, so a published prompt is sent exactly as written)."""
    where = f"propose.prompt_file '{path}'"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where} not found; give an existing text file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read as UTF-8 text ({exc})") from None
    check_template(text, where)
    return PromptTemplate(text, None, f"file {path}")


def load_prompt(cfg: ProposeConfig) -> PromptTemplate:
    """`propose.prompt_file` when set, else the built-in `propose.prompt`."""
    return load_prompt_file(cfg.prompt_file) if cfg.prompt_file else get_prompt(cfg.prompt)


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


def strip_prompt_echo(caption: str, prompt: str | None) -> str:
    """`caption` without a leading copy of the captioner's `prompt`.

    Captioners echo their prompt with other case, spacing or punctuation (BLIP lowercases it),
    so the match compares letters and digits only; what follows the echo is kept verbatim,
    minus the punctuation and spaces that separated it. No echo: `caption` unchanged."""
    wanted = [ch.casefold() for ch in prompt or "" if ch.isalnum()]
    if not wanted:
        return caption
    matched = 0
    for position, ch in enumerate(caption):
        if not ch.isalnum():
            continue
        if ch.casefold() != wanted[matched]:
            return caption
        matched += 1
        if matched == len(wanted):
            rest = caption[position + 1 :]
            if rest[:1].isalnum():  # "a photo" is no echo of "a phot"
                return caption
            return rest.lstrip(" \t\r\n.,;:!?-–—\"'")
    return caption


def clean_caption(caption: str, caption_prompt: str | None = None) -> str:
    """A caption as the LLM sees it: on one line, without the captioner's prompt echo."""
    return single_line(strip_prompt_echo(single_line(caption), caption_prompt)) or "(no caption)"


def cut_caption(caption: str, max_chars: int) -> tuple[str, bool]:
    """(caption, was it cut): at most `max_chars` characters, cut after the last whole word
    that fits beside "…" (mid-word only when that word is over half the room)."""
    if len(caption) <= max_chars:
        return caption, False
    room = max(max_chars - len(ELLIPSIS), 0)
    head = caption[:room]
    if caption[room : room + 1] != " ":
        space = head.rfind(" ")
        if space > room // 2:
            head = head[:space]
    return head.rstrip() + ELLIPSIS, True


def llm_captions(
    captions: list[str], caption_prompt: str | None = None, max_chars: int | None = None
) -> tuple[list[str], int]:
    """The captions as the LLM sees them (`clean_caption`, then cut to `max_chars` when given)
    and how many of them were cut."""
    cleaned = [clean_caption(c, caption_prompt) for c in captions]
    if max_chars is None:
        return cleaned, 0
    cut = [cut_caption(c, max_chars) for c in cleaned]
    return [c for c, _ in cut], sum(was_cut for _, was_cut in cut)


def _numbered(captions: list[str]) -> str:
    return "\n".join(f"{number}. {caption}" for number, caption in enumerate(captions, start=1))


def _check_max_hypotheses(max_hypotheses: int) -> None:
    if max_hypotheses < 1:
        raise ConfigError(
            f"config key 'propose.max_hypotheses_per_round' must be >= 1, got {max_hypotheses}"
        )


def build_proposer_messages(
    template: PromptTemplate,
    captions_a: list[str],
    captions_b: list[str],
    *,
    max_hypotheses: int,
    caption_prompt: str | None = None,
    max_caption_chars: int | None = None,
) -> list[dict[str, str]]:
    """OpenAI chat messages asking for differences that favour group A.

    `caption_prompt`: the captioner's prompt, removed where a caption starts with it.
    `max_caption_chars`: longer captions are cut (see `llm_captions`)."""
    _check_max_hypotheses(max_hypotheses)
    for label, captions in (("A", captions_a), ("B", captions_b)):
        if not captions:
            raise InputError(
                f"no captions for set {label}: the proposer needs at least one captioned image "
                "per set (check that the set is not empty and that captioning succeeded)"
            )
    clean_a, _ = llm_captions(captions_a, caption_prompt, max_caption_chars)
    clean_b, _ = llm_captions(captions_b, caption_prompt, max_caption_chars)
    values = {
        "captions_a": _numbered(clean_a),
        "captions_b": _numbered(clean_b),
        "text": "\n".join([f"Group A: {c}" for c in clean_a] + [f"Group B: {c}" for c in clean_b]),
        "num_hypotheses": str(max_hypotheses),
    }
    user = template.user.format_map(values)  # fields checked: only the names in `values`
    messages = [{"role": "user", "content": user}]
    if template.system is not None:
        messages.insert(0, {"role": "system", "content": template.system})
    return messages


def build_refine_messages(
    items: list[RefineItem],
    *,
    max_hypotheses: int,
    caption_prompt: str | None = None,
    max_caption_chars: int | None = None,
) -> list[dict[str, str]]:
    """OpenAI chat messages asking for sharper concepts than `items` (best first)."""
    if not items:
        raise ValueError("refinement needs at least one ranked hypothesis to show")
    blocks = []
    for number, item in enumerate(items, start=1):
        lines = [f'{number}. "{single_line(item.hypothesis)}" (AUROC {item.auroc:.2f})']
        misses, _ = llm_captions(item.misses, caption_prompt, max_caption_chars)
        lines += [f"   - {c}" for c in misses] or ["   - (no caption available)"]
        blocks.append("\n".join(lines))
    values = {"scored": "\n".join(blocks), "num_hypotheses": str(max_hypotheses)}
    return [
        {"role": "system", "content": REFINE.system or ""},
        {"role": "user", "content": REFINE.user.format_map(values)},
    ]


def build_paired_messages(
    captions_a: list[str],
    captions_b: list[str],
    *,
    max_hypotheses: int,
    caption_prompt: str | None = None,
    max_caption_chars: int | None = None,
) -> list[dict[str, str]]:
    """OpenAI chat messages showing pair i as `captions_a[i]` beside `captions_b[i]` and asking
    for differences that favour A (captions cleaned and cut as in `llm_captions`)."""
    _check_max_hypotheses(max_hypotheses)
    if len(captions_a) != len(captions_b):
        raise ValueError(
            f"paired captions must align: {len(captions_a)} of A, {len(captions_b)} of B"
        )
    if not captions_a:
        raise InputError(
            "no captioned pair: the paired proposer needs at least one pair whose two images "
            "were both captioned (check that the sets share pair keys and that captioning worked)"
        )
    clean_a, _ = llm_captions(captions_a, caption_prompt, max_caption_chars)
    clean_b, _ = llm_captions(captions_b, caption_prompt, max_caption_chars)
    pairs = "\n\n".join(
        f"Pair {number}:\nA: {a}\nB: {b}"
        for number, (a, b) in enumerate(zip(clean_a, clean_b, strict=True), start=1)
    )
    values = {"pairs": pairs, "num_hypotheses": str(max_hypotheses)}
    return [
        {"role": "system", "content": PAIRED.system or ""},
        {"role": "user", "content": PAIRED.user.format_map(values)},
    ]
