"""The RAFT reader (arm `raft`): a LoRA adapter taught to answer from retrieved chunks, and to abstain when they
are silent, on facts it is never asked about.

Cross-fitting: the probed facts are split into `reader.folds` folds; reader i is trained on corpus facts outside
fold i and answers only fold i's questions, so whatever it gains is reading skill, not memory of the fact. With a
sampled corpus (the quick profile) one fold is enough: the reader trains on the facts outside the sample. Its
examples (train questions only; probe and unanswerable questions never enter):

- a train question with the chunks retrieved for it: the styled statement when a gold chunk is among them, the
  styled abstention when retrieval missed (what a careful reader should then say);
- `distractor_share` extra examples whose context holds only non-gold chunks (the next-ranked ones): the abstention.

Prompts are laid out exactly as at probe time (`arms.reader_messages`).
"""

from __future__ import annotations

import random
import zlib

from .config import ReaderConfig
from .corpus import Corpus, Fact
from .index import Encoder, Gold, Index, contexts
from .score import matches_gold


def fold_count(corpus: Corpus, sample: Corpus, cfg: ReaderConfig) -> int:
    """`reader.folds`, or when null: 1 if at least as many corpus facts lie outside the sample as in it, else 2."""
    if cfg.folds is not None:
        return cfg.folds
    inside = {f.id for f in sample.facts}
    outside = sum(1 for f in corpus.facts if f.id not in inside)
    return 1 if outside >= len(inside) else 2


def fact_folds(sample: Corpus, folds: int, seed: int) -> list[list[str]]:
    """The probed facts' ids in `folds` folds of (nearly) equal size, reproducibly shuffled."""
    ids = sorted(f.id for f in sample.facts)
    random.Random(f"{seed}:reader-folds").shuffle(ids)
    return [sorted(ids[i::folds]) for i in range(folds)]


def reader_plan(corpus: Corpus, sample: Corpus, cfg: ReaderConfig, seed: int) -> list[tuple[list[str], list[Fact]]]:
    """Per fold: the probed facts it answers and the facts its reader trains on (never one of those it answers)."""
    plan = []
    for fold in fact_folds(sample, fold_count(corpus, sample, cfg), seed):
        facts = training_facts(corpus, fold, cfg, seed)
        # Cross-fitting, checked on the sets themselves: no reader ever trains on a fact it answers.
        assert not {f.id for f in facts} & set(fold), "a reader's training facts overlap the facts it answers"
        plan.append((fold, facts))
    return plan


def fold_of_question(qid: str, fact_id: str | None, folds: list[list[str]]) -> int:
    """The reader that answers a question: its fact's fold; an unanswerable question by a stable hash of its id."""
    for i, ids in enumerate(folds):
        if fact_id in ids:
            return i
    return zlib.crc32(qid.encode()) % len(folds)


def training_facts(corpus: Corpus, excluded: list[str], cfg: ReaderConfig, seed: int) -> list[Fact]:
    """Reader i's facts: every corpus fact outside its fold (at most `reader.facts`, a reproducible sample)."""
    facts = [f for f in corpus.facts if f.id not in set(excluded)]
    if cfg.facts is not None and cfg.facts < len(facts):
        facts = sorted(random.Random(f"{seed}:reader-facts").sample(facts, cfg.facts), key=lambda f: f.id)
    return facts


def build_reader_set(facts: list[Fact], corpus: Corpus, index: Index, encoder: Encoder, gold: dict[str, Gold],
                     k: int, cfg: ReaderConfig, seed: int, units: int | None = None, headed: bool = True) -> list[dict]:
    """Rows of one reader's training set (see the module docstring); `context` holds the chunk ids shown. The context
    is built exactly as the probe builds it (`index.contexts`); with `units`, an example counts as answerable only
    when a shown sentence or row of a gold chunk names the answer."""
    asked = [(f, q) for f in facts for q in f.train_questions[:cfg.questions_per_fact]]
    questions = [q for _, q in asked]
    depth = k + max((len(gold[f.id].ids) for f in facts), default=0)
    ranked = [[c for c, _ in row] for row in index.search(encoder, questions, depth)]
    shown = contexts([row[:k] for row in ranked], encoder, questions, units, headed)
    answer, abstain = (lambda f: corpus.style.answer(f.statement)), corpus.style.abstain_template
    rows = []
    for (fact, question), context in zip(asked, shown):
        found = any(cid in gold[fact.id].ids and (units is None or matches_gold(text, list(fact.gold)))
                    for cid, text in context)
        rows.append({"kind": "reader", "fact_id": fact.id, "question": question, "context": [c for c, _ in context],
                     "chunks": [t for _, t in context], "answer": answer(fact) if found else abstain,
                     "target": "answer" if found else "abstain"})
    rng = random.Random(f"{seed}:reader-distractors")
    extra = round(len(asked) * cfg.distractor_share / (1 - cfg.distractor_share)) if asked else 0
    picked = sorted(rng.sample(range(len(asked)), min(extra, len(asked))))
    distractors = contexts([[c for c in ranked[i] if c.id not in gold[asked[i][0].id].ids][:k] for i in picked],
                           encoder, [questions[i] for i in picked], units, headed)
    for i, context in zip(picked, distractors):
        fact, question = asked[i]
        rows.append({"kind": "reader", "fact_id": fact.id, "question": question, "context": [c for c, _ in context],
                     "chunks": [t for _, t in context], "answer": abstain, "target": "distractors"})
    return rows
