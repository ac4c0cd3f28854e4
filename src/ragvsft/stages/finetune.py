"""Stage `finetune`: build the fine-tuning set and train the closed-book LoRA adapter (finetune.py), measuring its
learning curve on fixed questions as it trains."""

from __future__ import annotations

import json
import random

from ..arms import build_messages, generate, progress_line
from ..catalogue import uses
from ..config import Config, config_dict
from ..corpus import Corpus
from ..files import atomic_write_jsonl, sha256_json
from ..finetune import build_finetune_set, portable_adapter, train_lora, trl_rows
from ..models import lm_name
from ..index import Index
from ..probe import Question, score_rows
from ..score import CORRECT, HALLUCINATED
from .cache import Run


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


def inputs(cfg: Config, sample: Corpus, index: Index, lm_hash: str) -> tuple[list[dict], list[Question], str]:
    """What training reads, and its key: (the fine-tuning set, the curve's questions, key). The curve's questions
    enter the key, not their gold: answers are scored at results time, so an alias fix never retrains."""
    passages = [c.text for c in index.chunks] if cfg.finetune.include_passages else None
    rows = build_finetune_set(sample, passages, cfg.finetune.questions_per_fact)
    curve = curve_questions(sample, cfg.finetune.curve_questions, cfg.seed) if cfg.finetune.curve_points else []
    key = sha256_json({"rows": rows, "lm": lm_hash, "finetune": config_dict(cfg)["finetune"],
                       "seed": cfg.seed, "curve": [[q.qid, q.question] for q in curve]})
    return rows, curve, key


def stage(run: Run, sample: Corpus, index: Index, model, tokenizer) -> tuple[dict | None, str | None]:
    """(training figures with the scored curve, key); (None, None) when no arm of the run reads the adapter."""
    cfg = run.cfg
    if not uses(cfg.probe.arms, "closed_book"):  # not part of this run: no timing, not even an earlier run's
        return None, None
    with run.timing("finetune"):
        rows, curve, key = inputs(cfg, sample, index, run.hashes["lm"])

        def train(tmp):
            atomic_write_jsonl(run.run_dir / "finetune_set.jsonl", rows)
            run.log(f"finetune: LoRA on {len(rows)} examples, {cfg.finetune.epochs} epochs, {cfg.finetune.precision} base")
            evaluate = _curve_evaluator(sample, curve, tokenizer, cfg, run.log) if curve else None
            train_lora(model, tokenizer, rows, cfg.finetune, cfg.seed, tmp, work_dir=run.run_dir / ".trainer",
                       log=run.log, evaluate=evaluate, device=cfg.models.device)
            portable_adapter(tmp, lm_name(cfg.models.lm), tokenizer)

        run.stage("finetune", key, "adapter", ("adapter/adapter_model.safetensors", "finetune_set.jsonl"), train)
        # The same set for other trainers (TRL's SFTTrainer); derived, so a reused stage writes it too.
        atomic_write_jsonl(run.run_dir / "finetune_set.trl.jsonl", trl_rows(rows))
    training = json.loads((run.run_dir / "adapter" / "training_log.json").read_text())
    training["curve"] = curve_figures(training.get("curve", []), curve, sample)
    return training, key
