"""Stage `reader`: train the cross-fitted RAFT readers (reader.py): reader i on facts outside fold i with their
retrieved chunks, its answerability head on its own training facts, and its answers where the context is silent."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..arms import generate, progress_line, prompt_states, reader_messages
from ..catalogue import uses
from ..config import Config
from ..corpus import Corpus
from ..files import InputError, atomic_write_json, atomic_write_jsonl, sha256_json
from ..finetune import arm_models, portable_adapter, train_lora, trl_rows
from ..models import lm_name
from ..index import Encoder, Index
from ..precision import torch_dtype
from ..probe import answerable
from ..reader import (HEAD_THRESHOLD, AnswerabilityHead, build_reader_set, head_examples, reader_epochs, reader_plan,
                      silent_questions)
from ..score import ABSTAINED, verdict
from .cache import Run


@dataclass
class ReaderPlan:
    folds: list[list[str]]  # probed fact ids per fold; reader i answers fold i
    key: str | None = None
    figures: dict | None = None


@dataclass
class Inputs:
    """What training the readers reads: per fold, its training facts, its set and its silent-context questions."""

    plan: list  # (probed fact ids, training facts) per fold
    sets: list[list[dict]]
    silent: list
    training: Config
    key: str

    @property
    def folds(self) -> list[list[str]]:
        return [fold for fold, _ in self.plan]


def inputs(cfg: Config, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder, lm_hash: str,
           index_key: str) -> Inputs:
    """The readers' folds, training sets and silent contexts, and the stage's key over them."""
    plan = reader_plan(corpus, sample, cfg.reader, cfg.seed)
    folds = [fold for fold, _ in plan]
    sets = [build_reader_set(facts, corpus, index, encoder, cfg.index.k, cfg.reader, cfg.seed,
                             cfg.index.context_units, cfg.index.headed) for _, facts in plan]
    by_id = {f.id: f for f in sample.facts}
    silent = [silent_questions([by_id[i] for i in fold], index, encoder, cfg.index.k, cfg.index.context_units,
                               cfg.index.headed) for fold in folds]
    training = cfg.finetune.model_copy(update={
        "epochs": cfg.reader.epochs, "learning_rate": cfg.reader.learning_rate, "batch_size": cfg.reader.batch_size,
        "lora_r": cfg.reader.lora_r, "first_lora_layer": cfg.reader.first_lora_layer,
        "max_length": cfg.reader.max_length, "curve_points": 0, "include_passages": False,
        "min_steps": 0, "max_epochs": None})  # the reader's own rule: reader.min_steps (reader_epochs)
    by_head = cfg.reader.abstain_by == "head"
    head_settings = {"questions": cfg.reader.head_questions, "layers": cfg.reader.head_layers} if by_head else None
    key = sha256_json({"sets": sets, "silent": silent, "folds": folds, "lm": lm_hash, "index": index_key,
                       "training": training.model_dump(mode="json"), "seed": cfg.seed,
                       # each fold's epochs as reader.min_steps raises them (the training settings hold the base's)
                       "epochs": [reader_epochs(len(rows), cfg.reader) for rows in sets],
                       # the head reads the reader's states in the generation dtype
                       **({"head": head_settings, "dtype": cfg.models.dtype} if by_head else {}),
                       **({"device": cfg.models.device} if cfg.models.device != "cpu" else {}),
                       **({"adapters": cfg.models.adapters} if cfg.models.adapters != "merged" else {})})
    return Inputs(plan, sets, silent, training, key)


def check(cfg: Config, corpus: Corpus, sample: Corpus) -> None:
    """Before anything is loaded: every cross-fitted reader must have facts of its own to train on."""
    if not uses(cfg.probe.arms, "reader"):
        return
    for _, facts in reader_plan(corpus, sample, cfg.reader, cfg.seed):
        if not facts:
            raise InputError([f"reader.folds: {cfg.reader.folds or 1} fold(s) leave no fact outside the probed ones "
                              "and their paragraphs or table rows to train the RAFT reader on; use 2 or more folds, "
                              "or a subset of the corpus"])


def _fit_head(run: Run, reader, tokenizer, facts: list, index: Index, encoder: Encoder,
              folder: Path) -> tuple[AnswerabilityHead, dict]:
    """Fit one reader's answerability head on its own training facts; save it as head.json (plain numbers, never a
    pickle); return it with its figures."""
    cfg = run.cfg
    began = time.perf_counter()
    examples = head_examples(facts, index, encoder, cfg.index.k, cfg.reader, cfg.index.context_units, cfg.index.headed)
    states = prompt_states(reader, tokenizer, [reader_messages(q, texts) for q, texts, _ in examples],
                           cfg.reader.head_layers, cfg.probe.batch_size,
                           progress_line(run.log, "reader: answerability head's examples"))
    labels = [label for *_, label in examples]
    head = AnswerabilityHead.fit(states, labels, cfg.reader.head_layers, cfg.seed)
    atomic_write_json(folder / "head.json", head.to_dict())
    fitted = head.probability(states) >= HEAD_THRESHOLD
    figures = {"examples": len(labels), "answering": sum(labels), "layers": cfg.reader.head_layers,
               "train_accuracy": round(float(np.mean(fitted == (np.asarray(labels) == 1))), 4),
               "seconds": round(time.perf_counter() - began, 2)}
    run.log(f"reader: answerability head on {len(labels)} examples ({sum(labels)} answering) in "
            f"{figures['seconds']:.0f} s")
    return head, figures


def silent_abstained(logs: list[dict], abstain_phrases: list[str]) -> float:
    """The share of silent contexts the readers declined, scored now from their stored answers: the reader's own
    abstention, or its head's probability under the threshold."""
    if not all("silent" in log for log in logs):  # a run folder from before answers were stored
        return round(sum(log["silent_abstained"] for log in logs) / max(1, sum(log["silent_asked"] for log in logs)), 4)
    silent = [s for log in logs for s in log["silent"]]
    declined = [verdict(s["answer"], None, abstain_phrases) == ABSTAINED
                or (s["answerable"] is not None and s["answerable"] < HEAD_THRESHOLD) for s in silent]
    return round(sum(declined) / max(1, len(declined)), 4)


def stage(run: Run, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder, model, tokenizer,
          index_key: str) -> ReaderPlan | None:
    """The readers' folds, their key and figures; None when no arm of the run reads a reader."""
    cfg = run.cfg
    if not uses(cfg.probe.arms, "reader"):
        return None
    with run.timing("reader"):
        run.log("reader: retrieving for its training questions and silent contexts (what its key reads)")
        read = inputs(cfg, corpus, sample, index, encoder, run.hashes["lm"], index_key)
        plan, folds, sets, silent, training, key = read.plan, read.folds, read.sets, read.silent, read.training, read.key
        by_head = cfg.reader.abstain_by == "head"

        def train(tmp):
            atomic_write_jsonl(run.run_dir / "reader_set.jsonl",
                               [{"fold": i, **row} for i, rows in enumerate(sets) for row in rows])
            for i, rows in enumerate(sets):
                targets = {t: sum(1 for r in rows if r["target"] == t) for t in ("answer", "abstain", "distractors")}
                run.log(f"reader {i + 1}/{len(sets)}: LoRA on {len(rows)} examples of "
                        f"{len({r['fact_id'] for r in rows})} other facts ({targets}), answers {len(folds[i])} facts")
                fold_training = training.model_copy(update={"epochs": reader_epochs(len(rows), cfg.reader)})
                figures = train_lora(model, tokenizer, rows, fold_training, cfg.seed, tmp / f"fold-{i}",
                                     work_dir=run.run_dir / ".trainer", device=cfg.models.device,
                                     log=lambda line: run.log(line.replace("finetune:", "reader:", 1)))
                portable_adapter(tmp / f"fold-{i}", lm_name(cfg.models.lm), tokenizer)
                reader = arm_models(model, {"reader": tmp / f"fold-{i}"}, torch_dtype(cfg.models.dtype),
                                    cfg.models.device, cfg.models.adapters, base=False)["reader"]
                asked = [reader_messages(q, chunks) for q, chunks in silent[i]]
                answers = generate(reader, tokenizer, asked, cfg.probe.max_new_tokens, cfg.probe.batch_size,
                                   progress_line(run.log, "reader: silent contexts"),
                                   batch_tokens=cfg.probe.batch_tokens)
                chances = [None] * len(answers)
                if by_head:
                    head, figures["head"] = _fit_head(run, reader, tokenizer, plan[i][1], index, encoder, tmp / f"fold-{i}")
                    chances = answerable([reader], [head], tokenizer, asked, [0] * len(asked), answers,
                                         cfg.probe.batch_size, progress_line(run.log, "reader: head on silent contexts"))
                # Answers, not a rate: the share declined is scored at results time (`silent_abstained`), so a
                # corrected abstention phrase re-scores it.
                atomic_write_json(tmp / f"fold-{i}" / "training_log.json",
                                  {**figures, "targets": targets, "trained_on_facts": len({r["fact_id"] for r in rows}),
                                   "answers_facts": len(folds[i]),
                                   "silent": [{"answer": a.answer, "answerable": None if c is None else round(c, 4)}
                                              for a, c in zip(answers, chances)]})

        paths = [f"reader/fold-{i}/{name}" for i in range(len(folds))
                 for name in ("adapter_model.safetensors", *(["head.json"] if by_head else []))]
        run.stage("reader", key, "reader", (*paths, "reader_set.jsonl"), train)
        # The same sets for other trainers (TRL's SFTTrainer); derived, so a reused stage writes them too.
        atomic_write_jsonl(run.run_dir / "reader_set.trl.jsonl",
                           [{"fold": i, **row} for i, rows in enumerate(sets) for row in trl_rows(rows)])
        logs = [json.loads((run.run_dir / "reader" / f"fold-{i}" / "training_log.json").read_text())
                for i in range(len(folds))]
        figures = {"folds": len(folds), "fold_facts": folds, "facts_per_fold": [len(f) for f in folds],
                   "trained_on_facts": [log["trained_on_facts"] for log in logs],
                   "examples": [log["examples"] for log in logs], "targets": [log["targets"] for log in logs],
                   "epochs": [log["epochs"] for log in logs], "seconds": round(sum(log["seconds"] for log in logs), 2),
                   "seconds_per_example": round(sum(log["seconds"] for log in logs) /
                                                max(1, sum(log["examples"] * log["epochs"] for log in logs)), 4),
                   "final_loss": [log["loss"][-1][1] if log["loss"] else None for log in logs],
                   "trained_tokens": sum(log.get("tokens", 0) for log in logs),
                   "abstain_by": cfg.reader.abstain_by, "head": [log.get("head") for log in logs] if by_head else None,
                   # Abstention where the context is silent, on the answered facts' first train questions (never
                   # the probe's)
                   "silent_abstained": silent_abstained(logs, corpus.abstain_phrases)}
    return ReaderPlan(folds, key, figures)
