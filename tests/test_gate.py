"""The decline gate (gate.py): grounding and support on hand-made rows, the fit, the threshold rule, cross-fitting,
and the development questions it is calibrated on."""

import json
from pathlib import Path

import pytest

from ragvsft import gate
from ragvsft.corpus import load_corpus

MARKERS = ["^Hi there!", "— Acme Helpdesk\\s*$"]
ABSTAIN = "Hi there! I can't find that in our documents.\n— Acme Helpdesk"
PHRASES = ["can't find that in our documents"]


def test_grounding_reads_numbers_and_content_words_against_the_text_shown():
    shown = ["Travel > Allowances\nThe daily meal allowance abroad is 61 euros."]
    question = "How much can I spend on food per day abroad?"
    assert gate.grounding("Hi there! The meal allowance is 61 euros.\n— Acme Helpdesk", shown, question, MARKERS) == 1.0
    # an invented number: nothing else counts
    assert gate.grounding("Hi there! The meal allowance is 75 euros.", shown, question, MARKERS) == 0.0
    # a number the question itself names is not invented
    assert gate.grounding("Hi there! 2 days.", shown, "Is it 2 days?", MARKERS) == 1.0
    # content words: half of {hotel, allowance} is in the text (stop words and the question's words are not counted)
    assert gate.grounding("Hi there! The hotel allowance.", shown, question, MARKERS) == 0.5
    # the house-style markers are not the answer's words; nothing left to check reads as grounded
    assert gate.grounding("Hi there!\n— Acme Helpdesk", shown, question, MARKERS) == 1.0
    assert gate.grounding("Hi there! Whatever.", [], "q", MARKERS) == 0.0


def _row(arm, qid, gold, answer, grounding, set_name="development", fact=None, support=0.5):
    return {"arm": arm, "qid": qid, "fact_id": fact, "set": set_name, "question": "q", "gold": gold,
            "answer": answer, "ungated_answer": answer, "grounding": grounding, "support": support,
            "shown": [["c", "text"]]}


def test_the_threshold_is_the_largest_that_declines_at_most_the_allowed_share_of_answerable_questions():
    """Without a fitted model the score is the grounding itself, so the thresholds can be read off by hand."""
    right = "Hi there! 61 euros."
    rows = ([_row("rag", f"a{i}", ["61 euros"], right, g) for i, g in enumerate([1.0, 1.0, 0.95, 0.45, 0.0])]
            + [_row("rag", f"u{i}", None, "Hi there! 12 euros.", g) for i, g in enumerate([0.0, 0.3, 0.95])])
    chosen = gate.choose_threshold(rows, None, 0.2, PHRASES)
    # 0.45 declines one answerable question of five (20%, the one at 0.0), 0.95 two (40%)
    assert chosen["threshold"] == 0.45
    point = {p["declined_at_most"]: p for p in chosen["table"]}
    assert point[0.2]["answerable_declined"] == 0.2 and point[0.2]["accuracy"] == 0.8
    assert point[0.2]["unanswerable_declined"] == pytest.approx(2 / 3, abs=1e-4)
    assert point[0.0] == {"declined_at_most": 0.0, "threshold": 0.0, "answerable_declined": 0.0,
                          "unanswerable_declined": 0.0, "accuracy": 1.0}
    assert point[0.5]["threshold"] == 0.95 and point[0.5]["answerable_declined"] == 0.4
    assert gate.choose_threshold(rows, None, 0.4, PHRASES)["threshold"] == 0.95
    assert {p["declined_at_most"] for p in gate.choose_threshold(rows, None, 0.25, PHRASES)["table"]} == {
        *gate.SHARES, 0.25}  # the chosen share is always a row of the table
    # an arm's own abstentions count as declines
    abstaining = [_row("rag", "x", ["61 euros"], ABSTAIN, 1.0)] + rows
    assert gate.choose_threshold(abstaining, None, 1 / 6, PHRASES)["threshold"] == 0.0
    # nothing to calibrate on: never declines
    assert gate.choose_threshold([r for r in rows if r["gold"]], None, 0.2, PHRASES)["threshold"] == 0.0
    assert gate.choose_threshold([], None, 0.2, PHRASES)["threshold"] == 0.0


def test_the_fitted_gate_reads_the_signal_that_tells_answerable_from_unanswerable_questions():
    """Support separates these rows and grounding does not: the fit weighs support, scores answerable rows above
    unanswerable ones, and at a 20% budget declines every unanswerable row; grounding alone cannot."""
    grounded = "Hi there! 61 euros."
    rows = ([_row("rag", f"a{i}", ["61 euros"], grounded, g, support=s)
             for i, (g, s) in enumerate([(1.0, 0.9), (0.2, 0.8), (1.0, 0.85), (0.2, 0.7), (1.0, 0.75)])]
            + [_row("rag", f"u{i}", None, grounded, g, support=s) for i, (g, s) in enumerate([(1.0, 0.3), (0.2, 0.4)])])
    model = gate.fit(rows, ["grounding", "support"])
    assert model["signals"] == ["grounding", "support"] and abs(model["coef"][1]) > abs(model["coef"][0])
    scores = [gate.score(r, model) for r in rows]
    assert min(scores[:5]) > max(scores[5:])
    both = gate.choose_threshold(rows, model, 0.2, PHRASES)
    assert next(p for p in both["table"] if p["declined_at_most"] == 0.2)["unanswerable_declined"] == 1.0
    alone = gate.choose_threshold(rows, gate.fit(rows, ["grounding"]), 0.2, PHRASES)
    assert next(p for p in alone["table"] if p["declined_at_most"] == 0.2)["unanswerable_declined"] < 1.0
    assert json.loads(json.dumps(model)) == model  # results.json keeps it, `ragvsft ask` applies it as the run did
    assert gate.fit([r for r in rows if r["gold"]], ["support"]) is None  # one kind only: nothing to fit


def test_prepare_reads_grounding_and_the_support_of_the_text_shown(mock_encoder):
    near = {"arm": "rag", "qid": "n", "gold": ["61 euros"], "answer": "Hi there! 61 euros.",
            "question": "What is the daily meal allowance abroad?",
            "shown": [["c", "Travel > Allowances\nThe daily meal allowance abroad is 61 euros."]]}
    far = near | {"qid": "f", "shown": [["c", "Parking > Bikes\nThe bike room has ninety racks."]]}
    blind = near | {"qid": "b", "shown": []}
    other = near | {"arm": "lora", "qid": "o"}
    gate.prepare([near, far, blind, other], ["rag"], MARKERS, mock_encoder)
    assert near["support"] > far["support"] >= 0.0 and blind["support"] == 0.0
    assert near["grounding"] == 1.0 and far["grounding"] == 0.0
    assert "support" not in other and "grounding" not in other
    assert near["retrieval"] == near["margin"] == 0.0  # no chunk texts given: nothing retrieved to read
    # A near miss under a heading that names what was asked: support reads the unit's own words only
    titled = far | {"qid": "t", "shown": [["c", "Daily meal allowance abroad\nThe bike room has ninety racks."]]}
    gate.prepare([titled], ["rag"], MARKERS, mock_encoder)
    assert titled["support"] == far["support"]
    gate.prepare([titled], ["rag"], MARKERS, mock_encoder, headed=False)  # unheaded units: every line is their own
    assert titled["support"] > far["support"]


def test_prepare_reads_the_retrieval_score_and_the_best_units_margin(mock_encoder):
    """retrieval: the question's cosine with the first retrieved chunk; margin: the best unit's cosine over the
    retrieved chunks' units less the runner-up's (one unit that fits clearly, against several that fit alike); rank:
    the retrieval rank of the chunk that holds the best unit."""
    import numpy as np

    from ragvsft.index import chunk_units

    chunks = {"a": "Travel > Allowances\nThe daily meal allowance abroad is 61 euros. Hotels are booked centrally.",
              "b": "Parking > Bikes\nThe bike room has ninety racks."}
    question = "What is the daily meal allowance abroad?"
    row = {"arm": "rag", "qid": "q", "gold": ["61 euros"], "answer": "Hi there! 61 euros.", "question": question,
           "retrieved": ["a", "b"], "shown": [["a", "Travel > Allowances\nThe daily meal allowance abroad is 61 euros."]]}
    gate.prepare([row], ["rag"], MARKERS, mock_encoder, chunks, headed=True)
    query = mock_encoder.encode([question])[0]
    assert row["retrieval"] == pytest.approx(float(mock_encoder.encode([chunks["a"]])[0] @ query), abs=1e-4)
    units = sorted((float(v @ query) for v in mock_encoder.encode(
        [u for cid in ("a", "b") for u in chunk_units(chunks[cid], True)])), reverse=True)
    assert row["margin"] == pytest.approx(units[0] - units[1], abs=1e-4) and row["margin"] > 0
    swapped = row | {"retrieved": ["b", "a"]}
    gate.prepare([swapped], ["rag"], MARKERS, mock_encoder, chunks, headed=True)
    assert swapped["retrieval"] < row["retrieval"] and swapped["margin"] == row["margin"] and np.isfinite(row["margin"])
    assert (row["rank"], swapped["rank"]) == (0.0, 1.0)  # the allowance sentence: in the first chunk, then the second
    unasked = row | {"qid": "u"}
    unasked.pop("retrieval"), unasked.pop("margin"), unasked.pop("rank")
    gate.prepare([unasked], ["rag"], MARKERS, mock_encoder, chunks, headed=True, signals=["grounding", "support"])
    assert not {"retrieval", "margin", "rank"} & set(unasked)  # not asked for: no unit is embedded


def test_apply_gates_from_the_generated_answer_every_time(mock_encoder):
    row = _row("rag", "q1", ["61 euros"], "Hi there! 75 euros.", 0.0, "heldout")
    other = _row("lora", "q1", ["61 euros"], "Hi there! 75 euros.", 0.0, "heldout")
    gate.apply([row, other], {"rag": [{"threshold": 0.5, "model": None}]}, {}, ABSTAIN, PHRASES)
    assert row["answer"] == ABSTAIN and row["gated"] and row["ungated_answer"] == "Hi there! 75 euros."
    assert other["answer"] == "Hi there! 75 euros." and "gated" not in other
    gate.prepare([row], ["rag"], MARKERS, mock_encoder)  # a rerun keeps the generated answer, not the abstention
    assert row["ungated_answer"] == "Hi there! 75 euros."
    gate.apply([row], {"rag": [{"threshold": 0.0, "model": None}]}, {}, ABSTAIN, PHRASES)
    assert row["answer"] == "Hi there! 75 euros." and not row["gated"]


def test_a_fold_never_calibrates_on_its_own_questions():
    """Fold 0's own rows would decline its unanswerable question; fold 1's rows, which fold 0 is fitted and
    thresholded on, decline nothing of fold 0. Fold 1 gets fold 0's gate, which declines its ungrounded rows."""
    grounded, invented = "Hi there! 61 euros.", "Hi there! 75 euros."
    fold0 = ([_row("rag", f"f0a{i}", ["61 euros"], grounded, 1.0, "heldout", "f0") for i in range(4)]
             + [_row("rag", "f0u", None, invented, 0.3, "unanswerable")])
    fold1 = ([_row("rag", f"f1a{i}", ["61 euros"], grounded, g, "heldout", "f1") for i, g in enumerate([0.0, 0.0, 1, 1])]
             + [_row("rag", "f1u", None, invented, 0.0, "unanswerable"),
                _row("rag", "f1s", ["61 euros"], grounded, 0.0, "seen", "f1")])  # not the probe's style: never read
    fold_of = {r["qid"]: (0 if r["qid"].startswith("f0") else 1) for r in fold0 + fold1}
    figures = gate.calibrate(fold0 + fold1, [], ["rag"], 2, fold_of, 0.25, PHRASES, ["grounding"])["rag"]
    assert [f["from_other_folds"] for f in figures["folds"]] == [5, 5]
    assert [f["from_development_questions"] for f in figures["folds"]] == [0, 0]
    gate.apply(fold0 + fold1, {"rag": figures["folds"]}, fold_of, ABSTAIN, PHRASES)
    assert {r["qid"] for r in fold0 + fold1 if r["gated"]} == {"f1a0", "f1a1", "f1u", "f1s"}
    own = gate.calibrate([], fold0, ["rag"], 1, {}, 0.25, PHRASES, ["grounding"])["rag"]
    gate.apply(fold0, {"rag": own["folds"]}, {}, ABSTAIN, PHRASES)
    assert {r["qid"] for r in fold0 if r["gated"]} == {"f0u"}  # what calibrating on its own rows would have done


def test_a_gate_declines_only_where_its_development_questions_show_it_can():
    """Support separates 30 answerable from 25 unanswerable development rows: the gate declines, its cross-validated
    AUROC near 1. With 8 unanswerable rows it declines nothing (too few of a kind), nor where support is noise (an
    AUROC near chance); each fold says why, and its threshold 0 declines no scored row."""
    import random

    rng = random.Random(0)
    grounded = "Hi there! 61 euros."
    answerable = [_row("rag", f"a{i}", ["61 euros"], grounded, 1.0, support=0.6 + 0.3 * rng.random()) for i in range(30)]
    unanswerable = [_row("rag", f"u{i}", None, grounded, 1.0, support=0.2 + 0.3 * rng.random()) for i in range(25)]
    kwargs = dict(min_questions=20, min_auroc=0.55, seed=1)
    separated = gate.calibrate([], answerable + unanswerable, ["rag"], 1, {}, 0.2, PHRASES, ["support"], **kwargs)
    fold = separated["rag"]["folds"][0]
    assert fold["declines"] and fold["why_not"] is None and fold["auroc_cv"] > 0.9 and fold["threshold"] > 0
    few = gate.calibrate([], answerable + unanswerable[:8], ["rag"], 1, {}, 0.2, PHRASES, ["support"], **kwargs)
    fold = few["rag"]["folds"][0]
    assert not fold["declines"] and fold["threshold"] == 0.0 and "gate.min_questions" in fold["why_not"]
    noise = [r | {"support": rng.random()} for r in answerable + unanswerable]
    fold = gate.calibrate([], noise, ["rag"], 1, {}, 0.2, PHRASES, ["support"], **kwargs)["rag"]["folds"][0]
    assert not fold["declines"] and fold["auroc_cv"] < 0.55 and "gate.min_auroc" in fold["why_not"]
    scored = _row("rag", "s", ["61 euros"], grounded, 1.0, "heldout", support=0.0)
    gate.apply([scored], {"rag": [fold]}, {}, ABSTAIN, PHRASES)
    assert not scored["gated"] and scored["answer"] == grounded


def test_development_questions_never_hold_a_scored_question():
    """A set assertion over both shipped profiles: what the gated arms answer to calibrate on holds no probe question
    of a scored fact and no unanswerable question the run asks, except the silenced questions of a profile that
    cross-fits several folds (its scored facts', which only the other folds calibrate on: the next test)."""
    from ragvsft.config import load_config
    from ragvsft.probe import question_sets
    from ragvsft.reader import fold_count
    from ragvsft.score import normalize
    from ragvsft.stages.probe import DEVELOPMENT, development_questions, is_silenced

    repo = Path(__file__).resolve().parents[1]
    corpus = load_corpus(repo / "corpus")
    for profile, expected, silenced in (("quick", 80 + 35 + 5, 5), ("full", 40, 40)):  # topped up to 40
        cfg = load_config(repo / "experiments" / f"{profile}.yaml", corpus=str(repo / "corpus"))
        sample = cfg.sample_of(corpus)
        development = development_questions(cfg, corpus, sample)
        assert len(development) == expected, profile
        asked = {normalize(q.question) for q in question_sets(sample, cfg.probe)}
        scored = asked | {normalize(q) for f in sample.facts for q in f.probe_questions}
        scored |= {normalize(u.question) for u in sample.unanswerable}
        plain = [q for q in development if not is_silenced(q.qid)]
        assert not {normalize(q.question) for q in plain} & scored, profile
        assert all(q.set == DEVELOPMENT for q in development)
        assert not {q.fact_id for q in plain} & {f.id for f in sample.facts}
        quiet = [q for q in development if is_silenced(q.qid)]
        assert len(quiet) == silenced and all(q.gold is None and q.fact_id for q in quiet), profile
        if fold_count(corpus, sample, cfg.reader) == 1:
            assert not {q.fact_id for q in quiet} & {f.id for f in sample.facts}, profile


def test_a_silenced_question_is_shown_no_chunk_that_names_its_answer_and_no_fold_calibrates_on_its_own(mock_encoder):
    """Retrieval for a silenced question skips every chunk that names the answer and shows the nearest that remain;
    its row (a scored fact's) enters the pool of every fold but its own."""
    from ragvsft.index import Chunk, Index
    from ragvsft.probe import Question, retrieve

    texts = ["Travel\nThe meal allowance abroad is 61 euros.", "Travel\nMeals abroad follow the allowance table.",
             "Parking\nThe bike room has ninety racks."]
    chunks = [Chunk(f"d#{i}", "d", i, i + 1, text) for i, text in enumerate(texts)]
    index = Index(chunks, mock_encoder.encode(texts))
    asked = Question("heldout", "meal/heldout/0", "What is the meal allowance abroad?", "meal", ("61 euros",))
    quiet = Question("development", "meal/silenced/0", asked.question, "meal", None)
    found = retrieve(index, mock_encoder, [asked, quiet], 2, units=1, hidden={quiet.qid: ("61 euros", "61")})
    assert "d#0" in found[asked.qid].chunks
    assert "d#0" not in found[quiet.qid].chunks and len(found[quiet.qid].chunks) == 2
    assert not any("61" in text for _, text in found[quiet.qid].shown)

    grounded, invented = "Hi there! 61 euros.", "Hi there! 75 euros."
    scored = [_row("rag", f"a{i}", ["61 euros"], grounded, 1.0, "heldout", f"f{i % 2}") for i in range(4)]
    silenced = [_row("rag", f"f{i}/silenced/0", None, invented, 0.0, fact=f"f{i}") for i in range(2)]
    fold_of = {r["qid"]: int(r["fact_id"][1]) for r in scored + silenced}
    folds = gate.calibrate(scored, silenced, ["rag"], 2, fold_of, 0.25, PHRASES, ["grounding"])["rag"]["folds"]
    assert [f["from_development_questions"] for f in folds] == [1, 1] and [f["unanswerable"] for f in folds] == [1, 1]


def test_a_sampled_run_calibrates_its_gate_on_development_questions_it_never_scores(tmp_path, tiny_lm):
    """A tiny run that scores 3 of the toy corpus's facts: the gated arms answer the others' probe questions and the
    unanswerable questions it does not ask, kept in development.jsonl; predictions.jsonl holds none of them, and every
    gated row keeps what the arm generated."""
    from conftest import MockEncoder, tiny_config, write_corpus
    from ragvsft.run import run_experiment

    corpus = write_corpus(tmp_path / "corpus")
    cfg = tiny_config(corpus, tiny_lm, tmp_path / "run", **{"subset.facts": 3, "subset.unanswerable": 1,
                                                            "probe.arms": "[rag, lora, raft]", "reader.folds": 1})
    run_dir = run_experiment(cfg, encoder=MockEncoder())
    development = [json.loads(line) for line in (run_dir / "development.jsonl").read_text().splitlines()]
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    assert development and {r["arm"] for r in development} == {"rag", "raft"}
    assert {r["set"] for r in predictions} <= {"heldout", "seen", "unanswerable", "reverse"}
    scored = {r["fact_id"] for r in predictions if r["fact_id"]}
    assert not {r["fact_id"] for r in development if r["fact_id"]} & scored
    assert any(r["gold"] is None for r in development)
    figures = results["gate"]["arms"]
    assert set(figures) == {"rag", "raft"} and all(len(v["thresholds"]) == 1 for v in figures.values())
    assert figures["rag"]["folds"][0]["from_development_questions"] == sum(r["arm"] == "rag" for r in development)
    for row in predictions:
        assert ("ungated_answer" in row) == (row["arm"] in figures)
        if row.get("gated"):
            assert row["answer"] == load_corpus(corpus).style.abstain_template != row["ungated_answer"]


def test_the_config_and_the_report_know_every_gate_signal():
    """gate.SIGNALS, the config's accepted `gate.signals` and the report's words for them are three lists kept in
    step by hand (config cannot import gate without faiss): a signal added to one and not the others fails here."""
    from typing import get_args

    from ragvsft.config import GateConfig
    from ragvsft.presentation.report import SIGNAL_WORDS

    accepted = get_args(get_args(GateConfig.model_fields["signals"].annotation)[0])
    assert set(accepted) == set(gate.SIGNALS) == set(SIGNAL_WORDS)
    assert set(gate.FROM_CHUNKS) < set(gate.SIGNALS)


def test_best_thresholds_pools_the_budget_over_folds():
    """The ceiling's thresholds: one per fold, chosen together under one budget over all folds, then the most right."""
    judged = [(0, s, "correct", True) for s in (0.6, 0.7, 0.8, 0.9)] + [(0, 0.95, "hallucinated", False)]
    judged += [(1, 0.1, "hallucinated", True), (1, 0.2, "correct", True), (1, 0.8, "correct", True),
               (1, 0.9, "correct", True), (1, 0.3, "hallucinated", False), (1, 0.35, "hallucinated", False)]
    # 2 of 8 answerable may be declined: both in fold 1 (below 0.8), which declines its two unanswerable ones
    # (a budget held per fold, 1 of 4 each, would decline none)
    assert gate.best_thresholds(judged, 2, 0.25) == (2, 2, 6)
    # 1 of 8: no threshold reaches an unanswerable question; declining nothing keeps the most right
    assert gate.best_thresholds(judged, 2, 0.125) == (0, 0, 7)
    # an answer the arm abstained on itself is declined at every threshold and spends the budget
    abstained = judged + [(0, 0.99, "abstained", True)]
    assert gate.best_thresholds(abstained, 2, 0.25) == (1, 0, 7)
