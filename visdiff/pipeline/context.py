"""What a proposer, ranker or evaluator variant may use during a run: the config, the planned
inputs, the run's LLM client and CLIP actors (when the run has them), its timer and progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from visdiff.config import DescribeConfig
from visdiff.llm.client import ChatClient
from visdiff.sources.plan import InputPlan
from visdiff.timing import StageTimer


@dataclass
class RunContext:
    config: DescribeConfig
    plan: InputPlan
    timer: StageTimer
    say: Callable[[str], None]
    client: ChatClient | None = None  # the run's LLM (llm.*); None with llm.backend=none
    clip: Any = None  # pipeline.actors.ClipActors when the ranker uses CLIP
