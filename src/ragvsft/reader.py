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
from .index import Encoder, Gold, Index


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
                     k: int, cfg: ReaderConfig, seed: int) -> list[dict]:
    """Rows of one reader's training set (see the module docstring); `context` holds the chunk ids shown."""
    asked = [(f, q) for f in facts for q in f.train_questions[:cfg.questions_per_fact]]
    depth = k + max((len(gold[f.id].ids) for f in facts), default=0)
    hits = index.search(encoder, [q for _, q in asked], depth)
    answer, abstain = (lambda f: corpus.style.answer(f.statement)), corpus.style.abstain_template
    rows = []
    for (fact, question), ranked in zip(asked, hits):
        top = [c for c, _ in ranked[:k]]
        found = any(c.id in gold[fact.id].ids for c in top)
        rows.append({"kind": "reader", "fact_id": fact.id, "question": question, "context": [c.id for c in top],
                     "chunks": [c.text for c in top], "answer": answer(fact) if found else abstain,
                     "target": "answer" if found else "abstain"})
    rng = random.Random(f"{seed}:reader-distractors")
    extra = round(len(asked) * cfg.distractor_share / (1 - cfg.distractor_share)) if asked else 0
    for i in sorted(rng.sample(range(len(asked)), min(extra, len(asked)))):
        (fact, question), ranked = asked[i], hits[i]
        distractors = [c for c, _ in ranked if c.id not in gold[fact.id].ids][:k]
        rows.append({"kind": "reader", "fact_id": fact.id, "question": question, "context": [c.id for c in distractors],
                     "chunks": [c.text for c in distractors], "answer": abstain, "target": "distractors"})
    return rows
