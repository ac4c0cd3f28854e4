"""The RAFT reader's training set: labels from what is shown, the share of abstention targets, silent contexts."""

import json
import math

import numpy as np

import pytest

from ragvsft.config import load_config
from ragvsft.corpus import load_corpus
from ragvsft.index import Index
from ragvsft.reader import (AnswerabilityHead, build_reader_set, evidence_blocks, head_examples, questions_per_fact,
                            reader_epochs, reader_plan, silent_questions, training_facts)
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


def test_a_reader_with_few_facts_takes_more_questions_and_epochs(toy_corpus, mock_encoder):
    cfg = load_config(None).reader  # 1 question per fact, at least 80 examples and 18 steps of 16
    assert [questions_per_fact(n, cfg) for n in (148, 94, 22)] == [1, 1, 4]
    assert [reader_epochs(n, cfg) for n in (148, 82, 10)] == [2, 3, 18]
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, mock_encoder, size=16, overlap=4)
    asked = {}
    for least in (0, 1000):
        few = load_config(None, [f"reader.min_examples={least}", "reader.abstain_share=0.5"]).reader
        rows = build_reader_set(list(corpus.facts), corpus, index, mock_encoder, 1, few, seed=0)
        asked[least] = {r["question"] for r in rows}
    assert asked[0] < asked[1000] <= {q for f in corpus.facts for q in f.train_questions}


def test_head_examples_are_labelled_by_what_is_shown(toy_corpus, mock_encoder):
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, mock_encoder, size=16, overlap=4)
    cfg = load_config(None, ["reader.head_questions=2"]).reader
    rows = head_examples(list(corpus.facts), index, mock_encoder, 1, cfg, units=1)
    asked = [(f, q) for f in corpus.facts for q in f.train_questions[:2]]
    assert len(rows) == 2 * len(asked) and [q for q, _, _ in rows] == [q for _, q in asked] * 2
    for (fact, _), (_, texts, label) in zip(asked * 2, rows):
        assert label == int(matches_gold(" ".join(texts), list(fact.gold)))
    assert all(label == 0 for _, _, label in rows[len(asked):])  # the silent half
    assert any(label == 1 for _, _, label in rows)


def test_the_answerability_head_separates_and_survives_json():
    rng = np.random.default_rng(0)
    states = rng.normal(size=(200, 8))
    labels = (states[:, 0] + 0.1 * rng.normal(size=200) > 0).astype(int).tolist()
    head = AnswerabilityHead.fit(states, labels, [1, 2], seed=0)
    chances = head.probability(states)
    assert np.mean((chances >= 0.5) == (np.asarray(labels) == 1)) > 0.9
    again = AnswerabilityHead.from_dict(json.loads(json.dumps(head.to_dict())))
    np.testing.assert_allclose(again.probability(states), chances)
    with pytest.raises(ValueError, match="both kinds"):
        AnswerabilityHead.fit(states, [1] * 200, [1], seed=0)


def test_probe_questions_teach_the_probe_style_but_never_the_first_which_the_gate_calibrates_on(toy_corpus, mock_encoder):
    from dataclasses import replace

    corpus = load_corpus(toy_corpus)
    facts = [replace(f, probe_questions=(*f.probe_questions, f"Asked once more: {f.probe_questions[0]}"))
             for f in corpus.facts]
    index = Index.build(corpus, mock_encoder, size=16, overlap=4)
    asked = {}
    for n in (0, 1):
        cfg = load_config(None, [f"reader.probe_questions={n}", "reader.min_examples=0"]).reader
        asked[n] = {r["question"] for r in build_reader_set(facts, corpus, index, mock_encoder, 1, cfg, seed=0)}
    first, second = {f.probe_questions[0] for f in facts}, {f.probe_questions[1] for f in facts}
    assert not asked[0] & (first | second)
    # (a question whose retrieved text does not name the answer is dropped, as abstain_share is 0)
    assert asked[1] - asked[0] and asked[1] - asked[0] <= second and not asked[1] & first


def test_a_reader_never_trains_on_the_passage_of_a_fact_it_answers(toy_corpus):
    """Cross-fitting by passage: the meal allowance and the hotel portal share one paragraph, so the reader that answers
    either trains on neither; facts of other paragraphs stay its training facts."""
    from conftest import DOCUMENTS, write_corpus

    path, cfg = "documents/policies/travel.md", load_config(None, ["reader.folds=2"]).reader
    apart = load_corpus(toy_corpus)  # the two facts in paragraphs of their own: each reader may train on the other
    assert {f.id for f in training_facts(apart, ["meal"], cfg, 0, evidence_blocks(apart))} == {"portal", "payload",
                                                                                               "security"}
    corpus = load_corpus(write_corpus(toy_corpus.parent / "one-paragraph",
                                      documents={**DOCUMENTS, path: DOCUMENTS[path].replace(".\n\nHotels", ". Hotels")}))
    blocks = evidence_blocks(corpus)
    assert blocks["meal"] == blocks["portal"] and len(blocks["meal"]) == 1 and not blocks["meal"] & blocks["payload"]
    assert {f.id for f in training_facts(corpus, ["meal"], cfg, 0, blocks)} == {"payload", "security"}
    for fold, facts in reader_plan(corpus, corpus, cfg, seed=0):
        trained = {f.id for f in facts}
        assert not trained & set(fold)
        assert not any(blocks[t] & blocks[a] for t in trained for a in fold)
