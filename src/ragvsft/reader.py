"""The RAFT reader (arm `raft`): a LoRA adapter taught to answer from retrieved chunks, and to abstain when they
are silent, on facts it is never asked about.

Cross-fitting: the probed facts are split into `reader.folds` folds; reader i is trained on corpus facts outside
fold i, none of them from a paragraph or table row that holds the evidence of a fact of fold i, and answers only fold
i's questions, so whatever it gains is reading skill, not memory of the fact or of its passage. With a
sampled corpus (the quick profile) one fold is enough: the reader trains on the facts outside the sample. Its
examples (train questions only; probe and unanswerable questions never enter):

- a train question (and, with `reader.probe_questions`, probe questions after the first: the probe's own style) with
  the chunks retrieved for it: the styled statement when what is shown names the answer, the
  styled abstention when retrieval missed (what a careful reader should then say);
- abstention targets make up `reader.abstain_share` of the set: retrieval misses, topped up with silent contexts (the
  best-ranked chunks that do not name the answer). Too many and the reader learns that declining is safe: its
  over-abstention on answerable questions is measured and reported.

Who declines (`reader.abstain_by`): the reader's own generation, or (`head`, the default) an answerability head, a
logistic regression on the reader's hidden state at the prompt's last token, fitted on the same training facts'
train questions, each shown once with its retrieved context and once with a silent one (labelled by whether the text
names the answer). Where the head says the text does not answer, the arm answers with the house-style abstention.
`benchmark.py --reader-sweep` measures both on train questions (README, "Measured").

Prompts are laid out exactly as at probe time (`arms.reader_messages`).
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import ReaderConfig
from .corpus import Corpus, Fact
from .files import InputError, read_json
from .index import Chunk, Encoder, Index, contexts, document_blocks, evidence_spans
from .score import matches_gold, names_answer

SILENT_DEPTH = 10  # ranked chunks searched beyond k for ones that do not name the answer
HEAD_THRESHOLD = 0.5  # the head is fitted on balanced classes: it declines when "answerable" is less likely than not


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


def evidence_blocks(corpus: Corpus) -> dict[str, set[tuple[str, int]]]:
    """fact id -> the paragraphs, list items and table rows (document, block start) that hold its evidence."""
    blocks = {d.path: (d.text, document_blocks(d.text)) for d in corpus.documents}
    found: dict[str, set[tuple[str, int]]] = {}
    for fact in corpus.facts:
        text, mine = blocks.get(fact.document, ("", []))
        found[fact.id] = {(fact.document, b.start) for s, e in evidence_spans(text, fact.evidence)
                          for b in mine if b.start < e and s < b.end}
    return found


def reader_plan(corpus: Corpus, sample: Corpus, cfg: ReaderConfig, seed: int) -> list[tuple[list[str], list[Fact]]]:
    """Per fold: the probed facts it answers and the facts its reader trains on: never one of those it answers, nor
    one whose evidence lies in the same paragraph or table row as theirs (`training_facts`)."""
    plan, blocks = [], evidence_blocks(corpus)
    for fold in fact_folds(sample, fold_count(corpus, sample, cfg), seed):
        facts = training_facts(corpus, fold, cfg, seed, blocks)
        # Cross-fitting, checked on the sets themselves: no reader ever trains on a fact it answers, or on its text.
        assert not {f.id for f in facts} & set(fold), "a reader's training facts overlap the facts it answers"
        assert not set().union(*(blocks[f.id] for f in facts)) & set().union(*(blocks[i] for i in fold)), \
            "a reader trains on a passage that holds the evidence of a fact it answers"
        plan.append((fold, facts))
    return plan


def fold_of_question(qid: str, fact_id: str | None, folds: list[list[str]]) -> int:
    """The reader that answers a question: its fact's fold; an unanswerable question by a stable hash of its id."""
    for i, ids in enumerate(folds):
        if fact_id in ids:
            return i
    return zlib.crc32(qid.encode()) % len(folds)


def training_facts(corpus: Corpus, excluded: list[str], cfg: ReaderConfig, seed: int,
                   blocks: dict[str, set[tuple[str, int]]]) -> list[Fact]:
    """Reader i's facts: every corpus fact outside its fold (at most `reader.facts`, a reproducible sample), less
    those whose evidence shares a paragraph or table row (`blocks`, evidence_blocks) with a fact of the fold. Why: a
    table row holds several facts; a reader trained on "How many cars does MV Tidewren carry?" with Tidewren's row
    answered "62 cars" when asked that row's passengers (the second corpus: RAFT 10% right on seen questions)."""
    answered = set().union(*(blocks[i] for i in excluded))
    facts = [f for f in corpus.facts if f.id not in set(excluded) and not blocks[f.id] & answered]
    if cfg.facts is not None and cfg.facts < len(facts):
        facts = sorted(random.Random(f"{seed}:reader-facts").sample(facts, cfg.facts), key=lambda f: f.id)
    return facts


def questions_per_fact(facts: int, cfg: ReaderConfig) -> int:
    """`reader.questions_per_fact`, raised for a reader with few facts until it has `reader.min_examples` questions
    (each fact gives at most all its train questions)."""
    return max(cfg.questions_per_fact, math.ceil(cfg.min_examples / max(1, facts)))


def reader_epochs(examples: int, cfg: ReaderConfig) -> float:
    """`reader.epochs`, raised to whole epochs until training takes at least `reader.min_steps` optimizer steps."""
    per_epoch = max(1, math.ceil(examples / cfg.batch_size))
    return max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))


def _ranked(index: Index, encoder: Encoder, questions: list[str], k: int) -> list[list[Chunk]]:
    """Each question's chunks, best first, searched beyond k so that silent contexts can be found."""
    return [[c for c, _ in row] for row in index.search(encoder, questions, k + SILENT_DEPTH)]


def _silent(ranked: list[Chunk], fact: Fact, k: int) -> list[Chunk]:
    """The best-ranked k chunks that do not name the fact's answer: a context that is silent on the question."""
    return [c for c in ranked if not matches_gold(c.text, list(fact.gold))][:k]


def build_reader_set(facts: list[Fact], corpus: Corpus, index: Index, encoder: Encoder, k: int, cfg: ReaderConfig,
                     seed: int, units: int | None = None, headed: bool = True) -> list[dict]:
    """Rows of one reader's training set (see the module docstring); `context` holds the chunk ids shown. The context
    is built exactly as the probe builds it (`index.contexts`). An example is answerable when what is shown names the
    fact's answer, in whichever document (a value is often stated in several). Abstention targets make up
    `reader.abstain_share` of the set: retrieval misses first, topped up with silent contexts (reproducibly drawn)."""
    # Probe questions of the training facts (never one the reader answers) teach the probe's own question style; the
    # first is left out, for the decline gate's development questions (gate.py), which must not be trained on.
    asked = [(f, q) for f in facts for q in (f.train_questions[:questions_per_fact(len(facts), cfg)]
                                             + f.probe_questions[1:1 + cfg.probe_questions])]
    questions = [q for _, q in asked]
    ranked = _ranked(index, encoder, questions, k)
    shown = contexts([row[:k] for row in ranked], encoder, questions, units, headed)
    answer, abstain = (lambda f: corpus.style.answer(f.statement)), corpus.style.abstain_template
    rows = []
    for (fact, question), context in zip(asked, shown):
        found = names_answer([text for _, text in context], fact.gold, question)
        rows.append({"kind": "reader", "fact_id": fact.id, "question": question, "context": [c for c, _ in context],
                     "chunks": [t for _, t in context], "answer": answer(fact) if found else abstain,
                     "target": "answer" if found else "abstain"})
    rng = random.Random(f"{seed}:reader-abstain")
    answerable = sum(r["target"] == "answer" for r in rows)
    wanted = math.ceil(answerable * cfg.abstain_share / (1 - cfg.abstain_share))
    missed = [i for i, r in enumerate(rows) if r["target"] == "abstain"]
    dropped = set(rng.sample(missed, max(0, len(missed) - wanted)))
    rows = [r for i, r in enumerate(rows) if i not in dropped]
    picked = sorted(rng.sample(range(len(asked)), min(max(0, wanted - len(missed)), len(asked))))
    silent = contexts([_silent(ranked[i], asked[i][0], k) for i in picked], encoder, [questions[i] for i in picked],
                      units, headed)
    for i, context in zip(picked, silent):
        fact, question = asked[i]
        rows.append({"kind": "reader", "fact_id": fact.id, "question": question, "context": [c for c, _ in context],
                     "chunks": [t for _, t in context], "answer": abstain, "target": "distractors"})
    return rows


def silent_questions(facts: list[Fact], index: Index, encoder: Encoder, k: int, units: int | None = None,
                     headed: bool = True) -> list[tuple[str, list[str]]]:
    """Each fact's first train question with a context that does not name its answer: how often a reader abstains
    when the documents shown are silent, measured on training questions (never on the probe's unanswerable ones)."""
    questions = [f.train_questions[0] for f in facts]
    ranked = _ranked(index, encoder, questions, k)
    shown = contexts([_silent(row, f, k) for row, f in zip(ranked, facts)], encoder, questions, units, headed)
    return [(q, [t for _, t in context]) for q, context in zip(questions, shown)]


def head_examples(facts: list[Fact], index: Index, encoder: Encoder, k: int, cfg: ReaderConfig,
                  units: int | None = None, headed: bool = True) -> list[tuple[str, list[str], int]]:
    """The answerability head's examples, (question, texts shown, label): each training fact's first
    `reader.head_questions` train questions, once with the context retrieved for it (label 1 when it names the answer)
    and once with a silent context (label 0)."""
    asked = [(f, q) for f in facts for q in f.train_questions[:cfg.head_questions]]
    questions = [q for _, q in asked]
    ranked = _ranked(index, encoder, questions, k)
    retrieved = contexts([row[:k] for row in ranked], encoder, questions, units, headed)
    silent = contexts([_silent(row, f, k) for row, (f, _) in zip(ranked, asked)], encoder, questions, units, headed)
    rows = []
    for (fact, question), context in zip(asked, retrieved):
        texts = [t for _, t in context]
        rows.append((question, texts, int(names_answer(texts, fact.gold, question))))
    rows += [(question, [t for _, t in context], 0) for (_, question), context in zip(asked, silent)]
    return rows


@dataclass(frozen=True)
class AnswerabilityHead:
    """P(the text shown answers the question) from the reader's prompt states: standardised, then logistic."""

    layers: list[int]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    @classmethod
    def fit(cls, states: np.ndarray, labels: list[int], layers: list[int], seed: int) -> "AnswerabilityHead":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        if len(set(labels)) < 2:
            raise ValueError("the answerability head needs examples of both kinds (answering and silent texts)")
        scaler = StandardScaler().fit(states)
        # Strong regularisation (C=0.1): ~300-600 examples against 1152 features; balanced: as many silent as answering.
        model = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000, random_state=seed)
        model.fit(scaler.transform(states), labels)
        return cls(list(layers), scaler.mean_.tolist(), scaler.scale_.tolist(), model.coef_[0].tolist(),
                   float(model.intercept_[0]))

    def probability(self, states: np.ndarray) -> np.ndarray:
        z = (states - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1 / (1 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AnswerabilityHead":
        return cls(list(data["layers"]), list(data["mean"]), list(data["scale"]), list(data["coef"]),
                   float(data["intercept"]))


def _head_problem(data, width: int | None, depth: int | None) -> str | None:
    """What is wrong with a head.json's contents (a run folder may come from a colleague: untrusted), or None."""
    if not isinstance(data, dict) or set(data) != {"layers", "mean", "scale", "coef", "intercept"}:
        return "not an answerability head (keys layers, mean, scale, coef, intercept)"
    if not (isinstance(data["layers"], list) and data["layers"]
            and all(isinstance(x, int) and not isinstance(x, bool) for x in data["layers"])):
        return "'layers' must be a list of layer numbers"
    if depth is not None and not all(0 <= x <= depth for x in data["layers"]):
        return f"'layers' {data['layers']} lie outside this model's hidden states 0 to {depth}"
    numbers = {k: data[k] for k in ("mean", "scale", "coef")}
    for key, values in numbers.items():
        if not (isinstance(values, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                 and math.isfinite(x) for x in values)):
            return f"'{key}' must be a list of finite numbers"
    if not (isinstance(data["intercept"], (int, float)) and math.isfinite(data["intercept"])):
        return "'intercept' must be a finite number"
    lengths = {k: len(v) for k, v in numbers.items()}
    if len(set(lengths.values())) != 1 or not lengths["coef"]:
        return f"'mean', 'scale' and 'coef' must be equally long and not empty (got {lengths})"
    if width is not None and lengths["coef"] != width * len(data["layers"]):
        return (f"{lengths['coef']} coefficients, but {len(data['layers'])} layer(s) of this model's width {width} "
                f"give {width * len(data['layers'])}")
    if any(x <= 0 for x in data["scale"]):
        return "'scale' must be positive"
    return None


def load_heads(run_dir: Path, folds: int, width: int | None = None, depth: int | None = None) -> list[AnswerabilityHead]:
    """A run's answerability heads, one per cross-fitted reader (reader/fold-i/head.json), each checked before use:
    a damaged or foreign file is an InputError naming it. `width`, `depth`: the model's hidden size and layer count."""
    remedy = "delete the run's reader folder to train the readers again"
    heads = []
    for i in range(folds):
        path = Path(run_dir) / "reader" / f"fold-{i}" / "head.json"
        data = read_json(path, remedy)
        problem = _head_problem(data, width, depth)
        if problem:
            raise InputError([f"{path}:1: {problem}; {remedy}"])
        heads.append(AnswerabilityHead.from_dict(data))
    return heads
