"""Stage `update`: the knowledge-update experiment (update.py): switch to the corpus's new version, ask the changed
facts again, then (update.retrain) retrain the closed-book adapter on the new version and ask once more."""

from __future__ import annotations

import time

from ..arms import build_messages, fewshot_pairs
from ..catalogue import ARMS, model_of, uses
from ..config import Config, config_dict
from ..corpus import Corpus
from ..files import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl, sha256_json
from ..finetune import arm_models, build_finetune_set, train_lora
from ..index import Encoder, Index, evidence_units
from ..precision import torch_dtype
from ..probe import question_bank, retrieve, run_models, run_probe
from ..reader import fold_of_question
from ..update import changed_questions, update_figures, update_verdict
from .cache import Run
from .reader import ReaderPlan


def actions(arms: list[str], seconds: dict[str, float]) -> dict[str, tuple[str, float]]:
    """What the switch to the new version takes for each arm, and its measured seconds: retrieval re-indexes, the
    few-shot prompt is rebuilt from the new facts, nothing else holding facts changes (the adapter stays as trained)."""
    taken = {}
    for arm in arms:
        if ARMS[arm].retrieves:
            taken[arm] = ("re-index", seconds["reindex"])
        elif ARMS[arm].examples:  # its examples are facts: drawn again from the new version
            taken[arm] = ("rebuild the prompt", seconds["prompt"])
        elif model_of(arm) == "closed_book":
            taken[arm] = ("none: the adapter stays as trained", 0.0)
        else:
            taken[arm] = ("none: holds no facts", 0.0)
    return taken


def update_key(cfg: Config, corpus: Corpus, asked: list, keys: dict, lm_hash: str) -> str:
    """What the update stage reads: the corpus's new version, the earlier stages' keys, every setting that changes
    an answer, the questions asked again. The corpus's path is not an input (a moved run folder reuses)."""
    settings = {k: v for k, v in config_dict(cfg).items() if k not in ("name", "out", "cost", "corpus")}
    return sha256_json({"updates": corpus.updates_sha256, "stages": keys, "settings": settings, "lm": lm_hash,
                        "questions": [[q.qid, q.question, q.gold] for q in asked]})


def stage(run: Run, corpus: Corpus, sample: Corpus, encoder: Encoder, model, tokenizer, questions: list,
          predictions: list[dict], keys: dict, reader: ReaderPlan | None) -> dict | None:
    """results.json `update`: the changed facts' answers before, after the switch and after retraining."""
    cfg, run_dir = run.cfg, run.run_dir
    if not cfg.update.enabled:
        return None
    with run.timing("update"):
        sample_after = sample.updated()
        asked = changed_questions(questions, sample)
        old_gold = {f.id: f.gold for f in sample.facts}
        key = update_key(cfg, corpus, asked, keys, run.hashes["lm"])

        def measure(tmp):
            run.log(f"update: {len(sample.updates)} changed facts, {len(asked)} questions; re-indexing the new version")
            t = time.perf_counter()
            index = Index.build(corpus.updated(), encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap,
                                cfg.index.chunking)
            index.save(tmp / "index")
            index = index.using(cfg.index.retriever)
            # the rag arm's worked reading examples are read off the new index too
            evidence = evidence_units(sample_after.facts, index.chunks, sample_after.documents, cfg.index.headed)
            seconds = {"reindex": time.perf_counter() - t}
            t = time.perf_counter()
            for q in asked:  # what editing the few-shot prompt takes: its examples drawn again from the new facts
                build_messages("fewshot", q.question, sample_after, None,
                               fewshot_pairs(sample_after, q.fact_id, cfg.probe.fewshot_k, cfg.seed, q.gold))
            seconds["prompt"] = time.perf_counter() - t
            dtype = torch_dtype(cfg.models.dtype)
            device = cfg.models.device
            wanted = {"base"} | ({"closed_book"} if uses(cfg.probe.arms, "closed_book") else set()) \
                | ({"reader"} if reader else set())
            models = run_models(run_dir, model, wanted, len(reader.folds) if reader else 0, cfg.models.dtype, device,
                                cfg.models.adapters, cfg.reader.abstain_by == "head")
            folds = {q.qid: fold_of_question(q.qid, q.fact_id, reader.folds) for q in asked} if reader else None
            bank = question_bank(cfg, corpus.updated(), index.chunks)  # the new version's answers name its units
            retrieved = retrieve(index, encoder, asked, cfg.index.k, cfg.index.context_units, cfg.index.headed,
                                 bank=bank)
            rows = [dict(r, phase="after") for r in run_probe(models, tokenizer, sample_after, asked, retrieved,
                                                               cfg.probe, cfg.seed, run.log, folds, evidence)]
            adapter_arms = [a for a in cfg.probe.arms if model_of(a) == "closed_book"]
            seconds["retrain"] = None
            if cfg.update.retrain and adapter_arms:
                passages = [c.text for c in index.chunks] if cfg.finetune.include_passages else None
                ft_rows = build_finetune_set(sample_after, passages, cfg.finetune.questions_per_fact)
                run.log(f"update: retraining the closed-book adapter on the new version ({len(ft_rows)} examples)")
                t = time.perf_counter()
                train_lora(model, tokenizer, ft_rows, cfg.finetune.model_copy(update={"curve_points": 0}), cfg.seed,
                           tmp / "adapter", work_dir=run_dir / ".trainer", log=run.log, device=device)
                seconds["retrain"] = time.perf_counter() - t
                del models  # the models before retraining are not asked again (one base in memory at a time)
                again = arm_models(model, {"closed_book": tmp / "adapter"}, dtype, device, cfg.models.adapters,
                                   base=False)
                rows += [dict(r, phase="retrained") for r in run_probe(
                    again, tokenizer, sample_after, asked, retrieved, cfg.probe.model_copy(update={"arms": adapter_arms}),
                    cfg.seed, run.log)]
            measured = {"seconds": {k: round(v, 3) if v is not None else None for k, v in seconds.items()},
                        "chunks": len(index.chunks)}
            atomic_write_jsonl(tmp / "predictions.jsonl", rows)
            atomic_write_json(tmp / "figures.json", measured)
            return rows, measured

        computed = run.stage("update", key, "update", ("update/predictions.jsonl", "update/figures.json"), measure)
        rows, measured = computed or (read_jsonl(run_dir / "update" / "predictions.jsonl"),
                                      read_json(run_dir / "update" / "figures.json",
                                                "delete the update folder to measure it again"))
        for row in rows:
            row["update_verdict"] = update_verdict(row["answer"], row["gold"], old_gold[row["fact_id"]],
                                                   corpus.abstain_phrases)
        seconds = measured["seconds"]
        asked_ids = {q.qid for q in asked}
        before = [r for r in predictions if r["qid"] in asked_ids]
        retrained = {a: ("retrain" if not ARMS[a].retrieves else "re-index + retrain",
                         seconds["retrain"] + (seconds["reindex"] if ARMS[a].retrieves else 0.0))
                     for a in cfg.probe.arms if model_of(a) == "closed_book" and seconds["retrain"] is not None}
        figures = update_figures(before, [r for r in rows if r["phase"] == "after"],
                                 [r for r in rows if r["phase"] == "retrained"], old_gold,
                                 actions(cfg.probe.arms, seconds), retrained, cfg.seed,
                                 cfg.probe.bootstrap_resamples, corpus.abstain_phrases)
        figures |= {"facts_changed": len(sample.updates), "questions": len(asked),
                    "sets": sorted({q.set for q in asked}), "seconds": seconds}
    return figures
