"""Stage `score`: every figure of the run from its predictions (score.py), the contents of results.json: rates with
intervals, comparisons, retrieval (recall@k, the other retrievers and chunking, the unit choices, RAG's errors), the
development record and the compute floor. Never cached: scoring reads the current gold, so a corrected alias
re-scores stored answers."""

from __future__ import annotations

import numpy as np

from .. import gate
from ..config import Config, config_dict
from ..corpus import Corpus
from ..files import read_jsonl
from ..index import RETRIEVERS, UNIT_CHOICES, Encoder, Index, gold_chunk_map, unit_choices
from ..precision import performance
from ..probe import development_facts, evaluate_retrieval, question_bank, score_rows
from ..reader import fact_folds, fold_count, fold_of_question
from ..score import arm_figures, comparisons, names_answer, rag_errors, risk_coverage_figures
from .cache import Run
from .probe import is_silenced


def retriever_variants(cfg: Config, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder,
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


def unit_choice_figures(cfg: Config, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder,
                        questions: list) -> dict:
    """Context recall of every way of choosing the reader's text from the top-k chunks (index.UNIT_CHOICES), side by
    side: on the scored held-out questions (measured, never used to choose) and on the development facts' probe
    questions (where a choice may be made), with the words each shows. The arms read the one marked used."""
    asked = {"heldout": [(q.question, q.gold) for q in questions if q.set == "heldout"],
             "development": [(q, f.gold) for f in development_facts(corpus, sample) for q in f.probe_questions]}
    best = "best unit, train questions attached" if cfg.index.unit_questions else "best unit"
    used = {1: best, 2: "best two units", None: "whole chunks"}.get(cfg.index.context_units)
    figures: dict = {name: {"used": name == used} for name in UNIT_CHOICES}
    bank = question_bank(cfg, corpus, index.chunks)
    for set_name, pairs in asked.items():
        texts = [q for q, _ in pairs]
        shown = unit_choices(encoder, texts, index.search(encoder, texts, cfg.index.k), cfg.index.headed,
                             bank) if pairs else {}
        for name, entry in figures.items():
            named = [names_answer(t, list(gold), q) for t, (q, gold) in zip(shown.get(name, []), pairs)]
            entry[set_name] = round(float(np.mean(named)), 4) if named else None
            entry[f"{set_name}_n"] = len(pairs)
            if set_name == "heldout":
                entry["words"] = round(float(np.mean([len(" ".join(t).split()) for t in shown[name]])), 1) if pairs else None
    return figures


def development_record(run: Run, corpus: Corpus, sample: Corpus, gated: dict | None) -> dict:
    """What the run's development data holds (facts it does not score, unanswerable questions it does not ask) and
    which stage read it: the embedder (index.tune_development), the unit choice (their train questions,
    index.unit_questions), the RAFT readers (train questions of facts outside their fold), the decline gate's
    thresholds and the unit-choice measurement (nothing is chosen by it)."""
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
            "reader_trained_on": len(reader_facts & ids), "unit_choices_measured_on": len(development),
            # their train questions choose the units shown (index.unit_questions), as the scored facts' do
            "units_chosen_by_train_questions_of": len(development) if cfg.index.unit_questions else 0,
            # the gate's development questions (stages/probe.development_questions), answered by the gated arms
            "gate_calibrated_on": {"facts": gated["development_answerable"] if gated else 0,
                                   "unanswerable": gated["development_unanswerable"] if gated else 0,
                                   "silenced": gated.get("development_silenced", 0) if gated else 0}}


def gate_figures(cfg: Config, corpus: Corpus, sample: Corpus, predictions: list[dict], development: list[dict],
                 encoder: Encoder, index: Index) -> dict | None:
    """Calibrate the gated arms' thresholds on development questions, per cross-fitted fold (the reader's folds, for
    every arm alike), and gate their answers in place (gate.py); results.json `gate`."""
    arms = cfg.gated_arms
    if not arms:
        return None
    folds = fact_folds(sample, fold_count(corpus, sample, cfg.reader), cfg.seed)
    fold_of = {r["qid"]: fold_of_question(r["qid"], r["fact_id"], folds) for r in predictions}
    scored = {fact for ids in folds for fact in ids}  # a silenced question of a scored fact belongs to its fold
    fold_of |= {r["qid"]: fold_of_question(r["qid"], r["fact_id"], folds)
                for r in development if r["fact_id"] in scored}
    markers, phrases = list(sample.style.markers), sample.abstain_phrases
    score_rows(development, [], sample)
    texts = {c.id: c.text for c in index.chunks}
    for rows in (predictions, development):
        gate.prepare(rows, arms, markers, encoder, texts, cfg.index.headed, cfg.gate.signals)
    figures = gate.calibrate(predictions, development, arms, len(folds), fold_of, cfg.gate.max_declined, phrases,
                             cfg.gate.signals, cfg.gate.min_questions, cfg.gate.min_auroc, cfg.seed)
    gate.apply(predictions, {arm: figures[arm]["folds"] for arm in arms}, fold_of, sample.style.abstain_template,
               phrases)
    dev = {r["qid"]: r["gold"] is not None for r in development}
    silenced = sum(map(is_silenced, dev))
    return {"arms": figures, "signals": cfg.gate.signals, "max_declined": cfg.gate.max_declined, "folds": len(folds),
            "fold_facts": folds, "development_answerable": sum(dev.values()),
            "development_unanswerable": len(dev) - sum(dev.values()) - silenced, "development_silenced": silenced}


def stage(run: Run, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder, questions: list,
          predictions: list[dict], training: dict | None, development: list[dict] | None = None) -> dict:
    """results.json's figures (the rows of `predictions` are gated and scored in place)."""
    cfg = run.cfg
    with run.timing("score"):
        score_rows(predictions, questions, sample)
        gated = gate_figures(cfg, corpus, sample, predictions, development or [], encoder, index)
        if gated:
            run.log("score: decline thresholds per fold, chosen on development questions: " + ", ".join(
                f"{arm} {[round(t, 3) for t in v['thresholds']]}" for arm, v in gated["arms"].items()))
            for arm, v in gated["arms"].items():
                for i, fold in enumerate(v["folds"]):
                    if not fold["declines"]:
                        run.log(f"score: {arm}, fold {i + 1}: the gate declines nothing: {fold['why_not']}")
            score_rows(predictions, questions, sample)  # the verdicts of the gated answers
        gold = gold_chunk_map(sample.facts, index.chunks, corpus.documents)
        split = sorted(fact for fact, g in gold.items() if not g.whole and g.ids)
        missing = sorted(fact for fact, g in gold.items() if not g.ids)
        if split:
            run.log(f"retrieval: the evidence of {len(split)} facts straddles a chunk boundary; the chunks holding "
                    f"most of it count as gold: {', '.join(split[:10])}{' ...' if len(split) > 10 else ''}")
        if missing:
            run.log(f"retrieval: no chunk holds any of the evidence of: {', '.join(missing)}")
        run.log("score: retrieval figures and the other retrievers and chunking")
        retrieval = evaluate_retrieval(index, encoder, gold, questions, cfg.index.k)
        retrieval |= {"chunks": len(index.chunks), "evidence_split": split, "evidence_missing": missing,
                      "chunking": cfg.index.chunking,
                      "variants": retriever_variants(cfg, corpus, sample, index, encoder, questions, retrieval)}
        run.log("score: the unit choices, on the held-out and the development questions")
        retrieval["unit_choices"] = unit_choice_figures(cfg, corpus, sample, index, encoder, questions)
        if "rag" in cfg.probe.arms:
            retrieval["rag_errors"] = rag_errors(predictions, {f: set(g.ids) for f, g in gold.items()})
        run.log("score: rates and comparisons with intervals resampled by fact")
        curves = risk_coverage_figures(predictions)  # the arms' AURC figures and the risk_coverage section alike
        results = {
            "corpus": {"name": corpus.name, "organisation": corpus.organisation, "sha256": corpus.sha256,
                       "documents": len(corpus.documents), "facts": len(sample.facts),
                       "unanswerable": len(sample.unanswerable), "facts_in_corpus": len(corpus.facts)},
            "run": {"name": cfg.name, "seed": cfg.seed, "lm": cfg.models.lm, "lm_sha256": run.hashes["lm"],
                    "embedder": cfg.models.embedder,
                    "dtype": cfg.models.dtype, "questions": len(questions),
                    "sets": {s: sum(1 for q in questions if q.set == s) for s in cfg.probe.sets}},
            "config": config_dict(cfg),  # every setting, so cost tables and cross-run comparisons need only this file
            "arms": arm_figures(predictions, cfg.seed, cfg.probe.bootstrap_resamples, curves),
            "comparisons": comparisons(predictions, cfg.seed, cfg.probe.bootstrap_resamples),
            "risk_coverage": curves,
            "retrieval": retrieval,
            "development": development_record(run, corpus, sample, gated),
            "gate": gated,
            "training": {k: v for k, v in training.items() if k != "curve"} if training else None,
            "curves": training.get("curve", []) if training else [],
        }
    return results


def performance_figures(results: dict, predictions: list[dict], params: int, precision: dict) -> dict:
    """The compute floor of the stages that run the language model (precision.performance): their token counts as
    this run saw them (less the prompt tokens taken from a shared prefix's cache, plus those computed for the
    contrasts of context-aware decoding), against the matmul peak measured for the precision used."""
    work = {"probe": {"forward_tokens": sum(r["prompt_tokens"] + r["generated_tokens"] - r.get("reused_tokens", 0)
                                            + r.get("contrast_tokens", 0) for r in predictions),
                      "seconds": results["timings"].get("probe")}}
    if results.get("training"):
        work["finetune (training)"] = {"trained_tokens": results["training"].get("tokens", 0),
                                       "seconds": results["training"]["seconds"]}
    if results.get("reader"):
        work["reader (training)"] = {"trained_tokens": results["reader"].get("trained_tokens", 0),
                                     "seconds": results["reader"]["seconds"]}
    return performance(work, params, precision)
