"""Retriever tuning: fine-tune the sentence embedder on (train question -> gold chunk) pairs, kept only if it helps.

    index.tune_embedder: true       # defaults.yaml; the run folder keeps the tuned model in embedder/

The pairs come from the sample's train questions (the data the LoRA adapter sees too): each with its gold chunk and
(`index.tune_units`) the sentence or table row of it that names the answer; probe and unanswerable questions never
enter. Loss: sentence-transformers' MultipleNegativesRankingLoss (the other chunks of a batch are
the negatives), in batches that never hold the same chunk twice (a duplicate would be a false negative). Each fact's
first train question is held back as validation: the tuned embedder is kept only when its MRR on those rises.
"""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import NamedTuple

import torch

from .corpus import Corpus
from .files import InputError, read_json
from .index import Chunk, Index, chunk_units, evidence_unit, gold_chunk_map, retrieval_metrics, select_units
from .score import names_answer
from .models import SentenceEncoder, load_encoder

TUNED = Path("embedder") / "model"  # where a run folder keeps its tuned embedder


def run_encoder(run_dir: Path, spec: str) -> SentenceEncoder:
    """The embedder a run's index was built with, as its index records it (index/meta.json `encoder`): the tuned
    copy in embedder/, or the configured one. A tuned copy left from an earlier run of the folder is not used when
    the index was built without it."""
    meta_path, tuned = Path(run_dir) / "index" / "meta.json", Path(run_dir) / TUNED
    meta = read_json(meta_path, "run `ragvsft run` with its config again") if meta_path.is_file() else {}
    which = meta.get("encoder") if isinstance(meta, dict) else None
    if which is None:  # an index from before meta.json: the tuned copy when the run kept one
        which = "tuned" if tuned.is_dir() else "configured"
    if which == "tuned":
        if not tuned.is_dir():
            raise InputError([f"{meta_path}:1: the index was built by the tuned embedder, but {tuned} is missing; "
                              "run `ragvsft run` with its config again"])
        return SentenceEncoder(tuned)
    return load_encoder(spec)


class Pair(NamedTuple):
    """One tuning example: a question, the text it should retrieve (a gold chunk or its evidence unit) and, once mined
    (`hard_negatives`), a text the untuned embedder confuses with it."""

    question: str
    text: str
    chunk_id: str  # the positive's chunk: a chunk and its own unit never meet in one batch as each other's negatives
    gold: tuple[str, ...]  # the fact's answers: a negative never names them
    gold_ids: frozenset[str]  # the fact's gold chunks: never a negative
    negative: str | None = None
    negative_id: str | None = None


def tuning_pairs(sample: Corpus, chunks: list[Chunk], units: bool = False, headed: bool = True,
                 development: tuple = (), probes: bool = True) -> tuple[list[Pair], list[tuple[str, set[str]]]]:
    """Training pairs (question -> gold chunk) from every train question but each fact's first, and (first train
    question, gold chunk ids) for validation. With `units`, each such question also gets its evidence unit (the first
    sentence or table row of its gold chunks that names the answer, as `index.chunk_units` cuts them) as a second pair
    under the same chunk id: the embedder learns to rank the unit a reader is shown, not only the chunk.
    `development`: facts the run does not score (development data). With `probes`, all their train and probe
    questions become pairs too: they bring the probe's question style, and no scored fact's probe question is among
    them. Without, they are tuned on exactly as the scored facts are (train questions only, the first held back), so
    that a development probe question meets the tuned embedder as a scored one does."""
    gold = gold_chunk_map((*sample.facts, *development), chunks, sample.documents)
    text = {c.id: c.text for c in chunks}
    pairs, validation = [], []
    asked = [(fact, True) for fact in sample.facts] + [(fact, not probes) for fact in development]
    for fact, as_scored in asked:
        ids = sorted(gold[fact.id].ids)
        if not ids:
            continue
        if as_scored:
            validation.append((fact.train_questions[0], set(ids)))
        answers, gold_ids = tuple(fact.gold), frozenset(ids)
        for question in (fact.train_questions[1:] if as_scored else (*fact.train_questions, *fact.probe_questions)):
            pairs.append(Pair(question, text[ids[0]], ids[0], answers, gold_ids))
            evidence = next(((cid, unit) for cid in ids if (unit := evidence_unit([text[cid]], list(fact.gold), question,
                                                                                  headed))), None) if units else None
            if evidence:
                pairs.append(Pair(question, evidence[1], evidence[0], answers, gold_ids))
    return pairs, validation


def hard_negatives(pairs: list[Pair], index: Index, encoder, k: int, headed: bool) -> list[Pair]:
    """Each pair with the text the untuned embedder (`encoder`, `index`) confuses with its positive: for a chunk, the
    best-ranked of the question's top 2k chunks that is not gold and does not name the answer; for a unit, the unit of
    the question's top-k chunks most similar to it that does not name the answer. In-batch negatives are other facts'
    chunks, so the embedder learnt topics, and the unit shown was often the right section's wrong sentence; with these
    negatives the unit shown named the answer for more held-out questions (README, "Measured")."""
    questions = list(dict.fromkeys(p.question for p in pairs))
    ranked = dict(zip(questions, ([chunk for chunk, _ in row] for row in index.search(encoder, questions, 2 * k))))
    # every unit of each question's top-k chunks, most similar first (index.select_units ranks them, embedded once)
    every = sum(len(chunk_units(c.text, headed)) for c in index.chunks)
    by_similarity = dict(zip(questions, select_units(encoder, questions, [[(c.id, c.text) for c in ranked[q][:k]]
                                                                          for q in questions], every, headed)))
    whole = {c.id: c.text for c in index.chunks}
    mined = []
    for p in pairs:
        if p.text == whole.get(p.chunk_id):
            wrong = next((c for c in ranked[p.question] if c.id not in p.gold_ids
                          and not names_answer([c.text], list(p.gold), p.question)), None)
            negative = (wrong.text, wrong.id) if wrong else None
        else:
            negative = next(((u, cid) for cid, u in by_similarity[p.question]
                             if u != p.text and not names_answer([u], list(p.gold), p.question)), None)
        mined.append(p._replace(negative=negative[0], negative_id=negative[1]) if negative else p)
    return mined


def unique_chunk_batches(pairs: list[Pair], size: int, rng: random.Random) -> list[list[Pair]]:
    """Shuffled batches of at most `size` pairs in which no chunk occurs twice, as a positive or a negative."""
    pool = list(pairs)
    rng.shuffle(pool)
    batches = []
    while pool:
        batch, used, rest = [], set(), []
        for pair in pool:
            ids = {pair.chunk_id} | ({pair.negative_id} if pair.negative_id else set())
            if ids & used or len(batch) >= size:
                rest.append(pair)
            else:
                batch.append(pair)
                used |= ids
        batches.append(batch)
        pool = rest
    return batches


def validation_figures(index: Index, encoder, validation: list[tuple[str, set[str]]]) -> dict:
    ranked = [[c.id for c, _ in row] for row in index.search(encoder, [q for q, _ in validation], 10)]
    figures = retrieval_metrics(ranked, [ids for _, ids in validation], [1, 3, 10])
    return {"recall_at": figures["recall_at"], "mrr": figures["mrr"]}


def tune_encoder(encoder, pairs: list[Pair], epochs: int, learning_rate: float, batch_size: int, seed: int,
                 log=None, precision: str = "float32") -> dict:
    """Train `encoder.model` (a SentenceTransformer) in place with MultipleNegativesRankingLoss; steps and seconds.
    `log` (optional) hears of every few batches, so the tuning is never silent for long. `precision: bfloat16` runs
    the forward pass under bfloat16 autocast (the weights, gradients and optimiser stay float32): the run passes its
    training precision (finetune.precision), measured fastest on this machine."""
    from sentence_transformers import losses

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = encoder.model
    encoder.forget()  # embeddings kept from the weights before tuning would otherwise be served after it
    loss_fn = losses.MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    began, steps = time.perf_counter(), 0
    reported = began
    model.train()
    device_type = next(model.parameters()).device.type
    autocast = (torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bfloat16"
                else contextlib.nullcontext())
    for epoch in range(epochs):
        for batch in unique_chunk_batches(pairs, batch_size, rng):
            if len(batch) < 2:  # one pair has no in-batch negative
                continue
            columns = [[b.question for b in batch], [b.text for b in batch]]
            if all(b.negative for b in batch):  # each question's hard negative: a third column
                columns.append([b.negative for b in batch])
            with autocast:
                loss = loss_fn([model.tokenize(column) for column in columns], None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if log and time.perf_counter() - reported > 6:  # a step takes ~4 s on 2 cores: gaps stay under 15 s
                reported = time.perf_counter()
                log(f"embedder: epoch {epoch + 1}/{epochs}, {steps} steps in {reported - began:.0f} s")
    model.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - began, 2)}
