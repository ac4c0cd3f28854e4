"""The factual-recall probe: question sets from the corpus, every arm asked every question, every answer scored.

Sets: `heldout` (probe questions, never in the fine-tuning set), `seen` (train questions, in it), `unanswerable`
(correct behaviour: abstain) and `reverse` (asked from the answer back to the subject, with its own gold).
Each prediction row holds the prompt messages, the top-k chunk ids retrieved (`retrieved`), the (chunk id, text)
units shown (`shown`, and `answer_shown`: whether they name the answer), answer, verdict, style check, tokens and
seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path


from .precision import torch_dtype
from .arms import (RAG_ARMS, Progress, build_messages, fewshot_pairs, generate, progress_line, prompt_states,
                   reading_demos, without_context)
from .catalogue import ARMS, contrast_weight, model_of
from .config import Config, ProbeConfig
from .corpus import Corpus
from .finetune import arm_models
from .index import Encoder, Gold, Index, UnitQuestions, contexts, heading_line, retrieval_metrics, unit_questions
from .reader import HEAD_THRESHOLD, load_heads
from .score import follows_style, hedged, names_answer, verdict


@dataclass(frozen=True)
class Question:
    set: str
    qid: str
    question: str
    fact_id: str | None
    gold: tuple[str, ...] | None  # None: unanswerable


def development_facts(corpus: Corpus, sample: Corpus) -> tuple:
    """The development data of a run: the corpus facts it does not score. Their train and probe questions may tune
    any arm; a scored fact's probe questions and the unanswerable questions never do."""
    scored = {f.id for f in sample.facts}
    return tuple(f for f in corpus.facts if f.id not in scored)


def question_bank(cfg: Config, corpus: Corpus, chunks: list) -> UnitQuestions:
    """The train questions attached to the units that name their answers (index.UnitQuestions), every fact's: the
    development facts' too, so that a development question is shown a unit chosen as a scored one's is."""
    return unit_questions(corpus.facts, chunks, corpus.documents, cfg.index.headed, cfg.index.unit_questions)


def question_sets(corpus: Corpus, cfg: ProbeConfig) -> list[Question]:
    """The probe's questions, in a fixed order, for the sets named in the config."""
    questions: list[Question] = []
    for fact in corpus.facts:
        if "heldout" in cfg.sets:
            for i, q in enumerate(fact.probe_questions[:cfg.heldout_per_fact]):
                questions.append(Question("heldout", f"{fact.id}/heldout/{i}", q, fact.id, tuple(fact.gold)))
        if "seen" in cfg.sets:
            for i, q in enumerate(fact.train_questions[:cfg.seen_per_fact]):
                questions.append(Question("seen", f"{fact.id}/seen/{i}", q, fact.id, tuple(fact.gold)))
        if "reverse" in cfg.sets and fact.reverse:
            for i, q in enumerate(fact.reverse.questions):
                questions.append(Question("reverse", f"{fact.id}/reverse/{i}", q, fact.id, tuple(fact.reverse.gold)))
    if "unanswerable" in cfg.sets:
        questions += [Question("unanswerable", f"{u.id}/unanswerable/0", u.question, None, None) for u in corpus.unanswerable]
    return questions


@dataclass(frozen=True)
class Context:
    """What retrieval found for one question and what the retrieving arms are shown of it."""

    chunks: tuple[str, ...]  # the top-k chunk ids, best first
    shown: tuple[tuple[str, str], ...]  # (source chunk id, text) as put into the prompt
    headings: tuple[str, ...] = ()  # the heading paths that lead the texts shown (section chunks), each once


HIDDEN_DEPTH = 20  # chunks searched beyond k for a question whose answer's chunks are taken out


def retrieve(index: Index, encoder: Encoder, questions: list[Question], k: int, units: int | None = None,
             headed: bool = True, hidden: dict[str, tuple[str, ...]] | None = None,
             bank: UnitQuestions | None = None) -> dict[str, Context]:
    """qid -> the top-k chunks retrieved for every question and what the retrieving arms are shown: those chunks
    whole, or with `units` their best sentences/table rows as (source chunk id, unit text) (`index.context_units`).
    `hidden`: qid -> answers; that question's top k are the best chunks that name none of them (a silenced
    development question, stages/probe.silenced_questions). `bank`: the train questions attached to units, which
    choose them with their cosine (index.UnitQuestions)."""
    hidden = hidden or {}
    found: dict[str, list] = {}
    # The others are searched exactly as without silenced questions (a deeper search may order ties otherwise).
    for group, depth in (([q for q in questions if q.qid not in hidden], k),
                         ([q for q in questions if q.qid in hidden], k + HIDDEN_DEPTH)):
        for q, row in zip(group, index.search(encoder, [q.question for q in group], depth)):
            found[q.qid] = [c for c, _ in row
                            if q.qid not in hidden or not names_answer([c.text], list(hidden[q.qid]))]
    texts, hits = [q.question for q in questions], [found[q.qid][:k] for q in questions]
    return {q.qid: Context(tuple(c.id for c in row), tuple(context), _headings(context) if headed else ())
            for q, row, context in zip(questions, hits, contexts(hits, encoder, texts, units, headed, bank))}


def _headings(shown: list[tuple[str, str]]) -> tuple[str, ...]:
    """The heading paths that lead the texts shown (the first line of a section chunk or of one of its units), each
    once."""
    return tuple(dict.fromkeys(head for _, text in shown if (head := heading_line(text)) is not None))


def evaluate_retrieval(index: Index, encoder: Encoder, gold: dict[str, Gold], questions: list[Question], k: int) -> dict:
    """recall@1..k and MRR@10 over the held-out questions, a chunk being gold when it holds the fact's evidence."""
    asked = [q for q in questions if q.set == "heldout"]
    depth = max(10, k)
    ranked = [[c.id for c, _ in row] for row in index.search(encoder, [q.question for q in asked], depth)]
    ks = sorted({1, 3, 5, k} | ({10} if depth >= 10 else set()))
    figures = retrieval_metrics(ranked, [set(gold[q.fact_id].ids) for q in asked], ks)
    figures["k"] = k
    return figures


def score_rows(rows: list[dict], questions: list[Question], corpus: Corpus) -> list[dict]:
    """(Re)score prediction rows against the current gold answers, abstention phrases and style markers, so a
    corrected alias or marker re-scores stored answers without generating them again."""
    by_qid = {q.qid: q for q in questions}
    abstain, markers = corpus.abstain_phrases, list(corpus.style.markers)
    for row in rows:
        gold = by_qid[row["qid"]].gold if row["qid"] in by_qid else row["gold"]
        row["gold"] = list(gold) if gold else None
        row["verdict"] = verdict(row["answer"], row["gold"], abstain)
        row["hedged"] = hedged(row["answer"], row["gold"], abstain)
        row["style_ok"] = follows_style(row["answer"], markers)
        # Whether the text shown names the answer (context recall); None where nothing was shown or nothing is gold.
        row["answer_shown"] = (names_answer([text for _, text in row["shown"]], row["gold"], row["question"])
                               if row.get("shown") and row["gold"] else None)
    return rows


def _answer(model, tokenizer, conversations: list, cfg: ProbeConfig, route: list[int] | None,
            progress: Progress | None = None, blocks: list | None = None, contrast: list | None = None,
            contrast_weight: float = 0.0):
    """Generations for the conversations; with `route`, conversation i goes to model[route[i]] (cross-fitted readers).
    Conversations with equal `blocks` entries (their few-shot examples) are generated together, so that the block is
    a prefix they share and is computed once (arms.generate). With `contrast` (each conversation without its
    retrieved text), decoding is context-aware with `contrast_weight` (and probe.contrast_plausibility)."""
    groups: dict = {}
    for i in range(len(conversations)):
        groups.setdefault((route[i] if route else 0, blocks[i] if blocks else None), []).append(i)
    out: list = [None] * len(conversations)
    done = 0
    for key in sorted(groups, key=lambda key: (key[0], groups[key][0])):  # fold by fold, as first asked within
        mine = groups[key]
        step = (lambda d, _, before=done: progress(before + d, len(conversations))) if progress else None
        for i, g in zip(mine, generate(model[key[0]] if route else model, tokenizer, [conversations[i] for i in mine],
                                       cfg.max_new_tokens, cfg.batch_size, step, batch_tokens=cfg.batch_tokens,
                                       contrast=[contrast[i] for i in mine] if contrast else None,
                                       contrast_weight=contrast_weight,
                                       plausibility=cfg.contrast_plausibility)):
            out[i] = g
        done += len(mine)
    return out


def run_models(run_dir: Path, model, wanted: set[str], folds: int, dtype: str, device: str, adapters: str,
               by_head: bool = False) -> dict:
    """The models a run's arms generate with, as `run_probe` takes them, those of `wanted` only: "base",
    "closed_book" (the run's adapter) and "reader" (its cross-fitted folds; with "reader_heads", their answerability
    heads, when they decline by head), built as models.adapters says (finetune.arm_models)."""
    run_dir = Path(run_dir)
    heads = (load_heads(run_dir, folds, model.config.hidden_size, model.config.num_hidden_layers)
             if "reader" in wanted and by_head else None)  # checked before any model is built
    adapter_dirs: dict = {}
    if "closed_book" in wanted:
        adapter_dirs["closed_book"] = run_dir / "adapter"
    if "reader" in wanted:
        adapter_dirs["reader"] = [run_dir / "reader" / f"fold-{i}" for i in range(folds)]
    models = arm_models(model, adapter_dirs, torch_dtype(dtype), device, adapters, base="base" in wanted)
    return models | ({"reader_heads": heads} if heads else {})


def answerable(readers: list, heads: list, tokenizer, conversations: list, route: list[int], generations: list,
               batch_size: int, progress: Progress | None = None) -> list[float]:
    """Each conversation's probability, by its fold's answerability head, that the text shown answers the question;
    the head's time is added to each answer's seconds."""
    chances = [0.0] * len(conversations)
    for fold in sorted(set(route)):
        mine = [i for i, r in enumerate(route) if r == fold]
        began = time.perf_counter()
        states = prompt_states(readers[fold], tokenizer, [conversations[i] for i in mine], heads[fold].layers, batch_size,
                               progress)
        share = (time.perf_counter() - began) / len(mine)
        for i, chance in zip(mine, heads[fold].probability(states)):
            chances[i] = float(chance)
            generations[i] = replace(generations[i], seconds=generations[i].seconds + share)
    return chances


def run_probe(models: dict, tokenizer, corpus: Corpus, questions: list[Question], retrieved: dict, cfg: ProbeConfig,
              seed: int, log: Callable[[str], None] | None = None, reader_fold: dict[str, int] | None = None,
              evidence: dict[str, str] | None = None) -> list[dict]:
    """Ask every arm every question; return one scored prediction row per (arm, question).

    `models` maps each model of the catalogue that the arms use ("base", "closed_book") to a model, "reader" to the
    list of cross-fitted reader models and, where they decline by head, "reader_heads" to their answerability heads
    (reader.py): a reader's answer becomes the house-style abstention where its head finds the text silent, and the
    row keeps what it said (`reader_answer`) and the head's probability (`answerable`). `reader_fold` maps a question
    id to the reader that answers it. `evidence` (fact id -> evidence unit, index.evidence_units) feeds the worked
    reading examples of the arms that show them (catalogue `demos`, probe.rag_demos); none without it. The arms that
    decode context-aware (catalogue `contrast`) do so with the weight of their setting, probe.rag_contrast or
    probe.raft_contrast (0: plain greedy decoding)."""
    rows: list[dict] = []
    for arm in cfg.arms:
        conversations, blocks = [], []
        for q in questions:
            context = retrieved.get(q.qid) if arm in RAG_ARMS else None
            chunks = [text for _, text in context.shown] if context else None
            examples = (fewshot_pairs(corpus, q.fact_id, cfg.fewshot_k, seed, q.gold) if ARMS[arm].examples
                        else reading_demos(corpus, evidence, q.fact_id, cfg.rag_demos, seed, q.gold)
                        if ARMS[arm].demos and evidence else None)
            conversations.append(build_messages(arm, q.question, corpus, chunks, examples))
            blocks.append(tuple(examples) if examples else None)
        began = time.perf_counter()
        which = model_of(arm)
        route = [reader_fold[q.qid] for q in questions] if which == "reader" else None
        weight = contrast_weight(arm, cfg)
        contrast = ([without_context(c, q.question, retrieved[q.qid].headings if q.qid in retrieved else ())
                     for c, q in zip(conversations, questions)] if weight > 0 else None)
        generations = _answer(models[which], tokenizer, conversations, cfg, route,
                              progress_line(log, f"arm {arm}") if log else None, blocks, contrast, weight)
        heads = models.get("reader_heads") if route else None
        chances = (answerable(models[which], heads, tokenizer, conversations, route, generations, cfg.batch_size,
                              progress_line(log, f"arm {arm}: answerability head") if log else None)
                   if heads else None)
        if log:
            log(f"arm {arm}: {len(questions)} answers in {time.perf_counter() - began:.0f} s")
        for i, (q, messages, g) in enumerate(zip(questions, conversations, generations)):
            declined = chances is not None and chances[i] < HEAD_THRESHOLD
            rows.append({
                "arm": arm, "set": q.set, "qid": q.qid, "fact_id": q.fact_id, "question": q.question,
                "gold": list(q.gold) if q.gold else None, "messages": messages,
                "retrieved": list(retrieved[q.qid].chunks) if arm in RAG_ARMS else [],
                "shown": [list(unit) for unit in retrieved[q.qid].shown] if arm in RAG_ARMS else [],
                "answer": corpus.style.abstain_template if declined else g.answer, "prompt_tokens": g.prompt_tokens,
                "generated_tokens": g.generated_tokens, "reused_tokens": g.reused_tokens,
                **({"contrast_tokens": g.contrast_tokens} if contrast else {}), "seconds": round(g.seconds, 4),
                "logprob": g.logprob,
                **({"reader_fold": route[i]} if route else {}),
                **({"answerable": round(chances[i], 4), "reader_answer": g.answer} if chances is not None else {}),
            })
    return score_rows(rows, questions, corpus)
