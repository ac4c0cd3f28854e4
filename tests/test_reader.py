"""The RAFT reader's training set: labels from what is shown, the share of abstention targets, silent contexts."""

import math

import pytest

from ragvsft.config import load_config
from ragvsft.corpus import load_corpus
from ragvsft.index import Index
from ragvsft.reader import build_reader_set, silent_questions
from ragvsft.score import matches_gold


def _shown(row) -> str:
    return " ".join(row["chunks"])


@pytest.mark.parametrize("units", [None, 1])
@pytest.mark.parametrize("share", [0.0, 0.3, 0.5])
def test_targets_follow_what_is_shown_and_the_abstain_share(toy_corpus, mock_encoder, units, share):
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, mock_encoder, size=16, overlap=4)
    cfg = load_config(None, ["reader.questions_per_fact=2", f"reader.abstain_share={share}"]).reader
    rows = build_reader_set(list(corpus.facts), corpus, index, mock_encoder, 1, cfg, seed=0, units=units)
    gold = {f.id: list(f.gold) for f in corpus.facts}
    statements = {f.id: f.statement for f in corpus.facts}
    answers = [r for r in rows if r["target"] == "answer"]
    declines = [r for r in rows if r["target"] != "answer"]
    assert answers and all(matches_gold(_shown(r), gold[r["fact_id"]]) for r in answers)
    assert all(r["answer"] == corpus.style.answer(statements[r["fact_id"]]) for r in answers)
    # A decline is never taught where the answer is in plain sight.
    assert all(not matches_gold(_shown(r), gold[r["fact_id"]]) for r in declines)
    assert all(r["answer"] == corpus.style.abstain_template for r in declines)
    assert len(declines) == math.ceil(len(answers) * share / (1 - share))
    assert rows == build_reader_set(list(corpus.facts), corpus, index, mock_encoder, 1, cfg, seed=0, units=units)


def test_silent_contexts_never_name_the_answer(toy_corpus, mock_encoder):
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, mock_encoder, size=16, overlap=4)
    asked = silent_questions(list(corpus.facts), index, mock_encoder, k=2, units=1)
    assert [q for q, _ in asked] == [f.train_questions[0] for f in corpus.facts]
    for fact, (_, chunks) in zip(corpus.facts, asked):
        assert chunks and not matches_gold(" ".join(chunks), list(fact.gold))
