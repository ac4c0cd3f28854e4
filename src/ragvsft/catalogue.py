"""The arms, described once: every other module (config, probe, run, report, plots, cost, ask, demo) reads them here.

An arm is a way of asking the model a question: which model answers (the base model, the closed-book LoRA adapter,
or the RAFT reader adapter), whether retrieved chunks are put in front of the question, and how its chat messages
are built (`arms.build_messages`, one builder per arm). This module imports no torch, so the config loader and the
report can use it cheaply. Adding an arm is one entry here plus its message builder in arms.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Model = Literal["base", "closed_book", "reader"]


@dataclass(frozen=True)
class Arm:
    name: str
    label: str  # in tables and sentences
    short: str  # on plot axes
    model: Model  # which weights answer
    retrieves: bool  # retrieved chunks (or their best units, index.context_units) are put in the prompt
    # What else its prompt reads, so a change to it regenerates the arm's answers (stages.probe.arm_key); a test checks each
    # declaration against what the message builder really puts in the prompt.
    system_prompt: bool = False  # the corpus's system prompt (style.yaml)
    examples: bool = False  # few-shot (train question, styled answer) pairs of other facts (probe.fewshot_k)
    demos: bool = False  # worked reading examples: other facts' evidence units and train questions, styled answers
                         # (arms.reading_demos, probe.rag_demos)
    contrast: str | None = None  # the probe setting of its weight where it decodes context-aware: each token
                                 # weighed against the prompt without its retrieved text (arms.without_context)
    # The arms its held-out accuracy is compared with, pair by pair (results.json `comparisons`: paired differences
    # with intervals), the pairs the claims and findings are about.
    compared_with: tuple[str, ...] = ()


# What each arm's model sees is its message builder's docstring (arms.build_messages) and the README's arm table.
CATALOGUE: tuple[Arm, ...] = (
    Arm("base", "base model", "base", "base", False),
    Arm("prompt", "prompting", "prompt", "base", False, system_prompt=True),
    Arm("fewshot", "few-shot", "few-shot", "base", False, system_prompt=True, examples=True),
    Arm("rag", "RAG", "RAG", "base", True, system_prompt=True, demos=True, contrast="rag_contrast",
        compared_with=("lora", "prompt")),
    Arm("lora", "LoRA fine-tuned", "LoRA", "closed_book", False),
    Arm("lora_rag", "LoRA + RAG", "LoRA+RAG", "closed_book", True, compared_with=("lora", "rag")),
    Arm("raft", "RAFT reader", "RAFT", "reader", True, contrast="raft_contrast", compared_with=("rag", "lora")),
)
ARMS: dict[str, Arm] = {arm.name: arm for arm in CATALOGUE}
NAMES: tuple[str, ...] = tuple(ARMS)
LABELS: dict[str, str] = {arm.name: arm.label for arm in CATALOGUE}
SHORT_LABELS: dict[str, str] = {arm.name: arm.short for arm in CATALOGUE}
TRAINED: tuple[str, ...] = tuple(arm.name for arm in CATALOGUE if arm.model != "base")
RETRIEVING: tuple[str, ...] = tuple(arm.name for arm in CATALOGUE if arm.retrieves)
COMPARISONS: tuple[tuple[str, str], ...] = tuple((arm.name, other) for arm in CATALOGUE for other in arm.compared_with)


def contrast_weight(arm: str, probe) -> float:
    """The weight with which `arm` decodes context-aware under the probe config (0: plain greedy decoding)."""
    setting = ARMS[arm].contrast
    return getattr(probe, setting) if setting else 0.0


def label(name: str) -> str:
    return LABELS.get(name, name)


def short_label(name: str) -> str:
    return SHORT_LABELS.get(name, name)


def model_of(name: str) -> Model:
    return ARMS[name].model


def uses(arms, model: Model) -> bool:
    """Whether any of `arms` is answered by `model`."""
    return any(ARMS[a].model == model for a in arms)
