"""Scoring: normalisation, aliases, numbers, abstention, style markers, bootstrap intervals."""

import pytest

import numpy as np
from scipy.stats import bootstrap

from ragvsft.score import (ABSTAINED, CORRECT, HALLUCINATED, arm_figures, comparisons, context_figures, follows_style,
                           hedged, names_answer,
                           matches_gold, mentions, normalize, paired_difference, rag_errors, rate_with_ci, set_figures,
                           verdict)

ABSTAIN = ["I can't find that in our documents", "i don't know"]


def test_normalize_keeps_number_punctuation_only():
    assert normalize("The HX-40 lifts 1,140 kg — at 0.35 m/s!") == "the hx 40 lifts 1140 kg at 0.35 m s"
    assert normalize("Ｆｕｌｌ-width ＡＢＣ") == "full width abc"  # NFKC
    assert normalize("10:00 to 15:00.") == "10:00 to 15:00"
    assert normalize("1,5 and 12,3456") == "1,5 and 12,3456"  # not thousands separators: kept as one token


@pytest.mark.parametrize("answer,gold,expected", [
    ("You may self-certify for up to three calendar days.", ["3 calendar days", "3 days"], True),
    ("It is sixty-one euros a day.", ["61 euros", "61"], True),
    ("It is Sixty One euros a day.", ["61 euros", "61"], True),
    ("It is sixty euros a day.", ["61 euros", "61"], False),
    ("Twelve months.", ["12 months"], True),
    ("three hours", ["3 days", "3"], False),            # a number word meets the unit rule as a digit does
    ("the one in Vellby", ["1", "1 site"], False),      # "one" stays a word: as a pronoun it is no number
])
def test_number_words_read_as_digits(answer, gold, expected):
    assert matches_gold(answer, gold) is expected


@pytest.mark.parametrize("answer", ["14 kg", "14kg", "14-kg", "14 KG.", "It is 14 kilograms", "14 kilos", "14.", "(14)",
                                    "about 14, I think", "14 units"])
def test_payload_answers_that_are_right(answer):
    assert matches_gold(answer, ["14 kg", "14", "14 kilograms"])


@pytest.mark.parametrize("answer,expected", [
    ("Between 10:00 and 15:00.", True), ("from 10:00 until 15:00", True), ("10:00 to 15:00", True),
    ("10:00-15:00", True), ("between 10:00 and 16:00", False), ("between 9:00 and 15:00", False),
    ("10:00 and later", False)])
def test_a_range_reads_as_between_and(answer, expected):
    assert matches_gold(answer, ["10:00 to 15:00", "10:00-15:00"]) is expected
    assert not matches_gold("between Monday and Friday", ["Monday to Friday"])  # words, not numbers: as written only


@pytest.mark.parametrize("answer", ["14 hours", "14h", "14 m/s", "140 kg", "14.5 kg", "1 4 kg", "14 euros", "14 %"])
def test_payload_answers_that_are_wrong(answer):
    assert not matches_gold(answer, ["14 kg", "14", "14 kilograms"])


@pytest.mark.parametrize("answer,gold,expected", [
    ("The interval is 12 hours.", ["12 months", "12"], False),       # a bare number with the wrong unit
    ("The interval is 12 months.", ["12 months", "12"], True),
    ("Every 12 mo.", ["12 months", "12"], True),                       # not a unit word we know: the number decides
    ("Every 12 month", ["12 months", "12"], True),                     # singular and plural are one unit
    ("It takes 5 days.", ["5 working days", "5"], True),
    ("It takes 5 weeks.", ["5 working days", "5"], False),
    ("Uptime was 99.95%.", ["99.95 %", "99.95%", "99.95"], True),
    ("Uptime was 99.95 percent.", ["99.95 %", "99.95"], True),
    ("Uptime was 99.95 hours.", ["99.95 %", "99.95"], False),
    ("It is priority 2.", ["priority 2", "2"], True),                  # no unit expected: any non-unit word is fine
    ("It takes 2 hours.", ["2"], False),                               # ... but a unit is still a different answer
    ("The fleet has 1140 robots.", ["1,140 robots", "1,140"], True),   # thousands separators
    ("The fee is €46.", ["46 euros", "€46", "46"], True),
    ("Each robot costs 46 thousand.", ["46 euros", "46"], True),
])
def test_bare_numbers_need_the_right_unit(answer, gold, expected):
    assert matches_gold(answer, gold) is expected


@pytest.mark.parametrize("answer,expected", [
    ("It carries 14 kg.", True), ("It carries 140 kg.", False), ("about 14.5 kg", False), ("(14)", True),
    ("It weighs 214 kg", False),
])
def test_numbers_match_as_whole_tokens(answer, expected):
    assert mentions(answer, "14") is expected


def test_verdicts():
    gold = ["58 euros", "58", "€58"]
    assert verdict("Hello! The allowance is €58 per day.", gold, ABSTAIN) == CORRECT
    assert verdict("It is 580 euros.", gold, ABSTAIN) == HALLUCINATED
    assert verdict("Sorry, I DON'T know.", gold, ABSTAIN) == ABSTAINED
    assert verdict("I can’t find that in our documents.", None, ABSTAIN) == ABSTAINED  # curly apostrophe
    assert verdict("The dental plan is Brightsmile.", None, ABSTAIN) == HALLUCINATED
    assert verdict("The allowance is 58 hours.", gold, ABSTAIN) == HALLUCINATED


def test_an_abstention_with_a_guess_is_abstained_and_flagged():
    gold = ["58 euros", "58"]
    answer = "I can't find that in our documents... perhaps 58 euros?"
    assert verdict(answer, gold, ABSTAIN) == ABSTAINED and hedged(answer, gold, ABSTAIN)
    assert not hedged("I don't know.", gold, ABSTAIN) and not hedged("It is 58 euros.", gold, ABSTAIN)
    assert not hedged("I don't know.", None, ABSTAIN)


def test_style_markers():
    markers = ["^Hi there!", "— Acme Helpdesk\\s*$"]
    assert follows_style("Hi there! It is 58 euros.\n— Acme Helpdesk\n", markers)
    assert not follows_style("It is 58 euros.\n— Acme Helpdesk", markers)
    assert not follows_style("Hi there! It is 58 euros.", markers)


def test_bootstrap_interval_brackets_the_rate_and_is_reproducible():
    hits = [True] * 30 + [False] * 70
    rate, ci = rate_with_ci(hits, seed=1)
    assert rate == 0.3 and ci[0] < 0.3 < ci[1] and 0.15 < ci[1] - ci[0] < 0.25
    assert rate_with_ci(hits, seed=1) == (rate, ci)
    assert rate_with_ci([True] * 5, seed=1) == (1.0, [1.0, 1.0])
    assert rate_with_ci([], seed=1) == (0.0, [0.0, 0.0])


def test_unanswerable_accuracy_is_the_share_abstained():
    figures = set_figures([ABSTAINED, ABSTAINED, HALLUCINATED, ABSTAINED], seed=0, unanswerable=True, resamples=200)
    assert figures["accuracy"] == figures["abstention_rate"] == 0.75 and figures["hallucination_rate"] == 0.25
    assert set_figures([CORRECT, HALLUCINATED], seed=0, resamples=200)["accuracy"] == 0.5


def _row(arm, set_name, v, retrieved=(), fact="f1", style=True):
    return {"arm": arm, "set": set_name, "verdict": v, "style_ok": style, "prompt_tokens": 10, "generated_tokens": 4,
            "seconds": 0.5, "fact_id": fact, "retrieved": list(retrieved)}


def test_arm_figures_and_rag_errors():
    rows = [_row("rag", "heldout", CORRECT, ["c1"]), _row("rag", "heldout", HALLUCINATED, ["c9"], fact="f2"),
            _row("rag", "heldout", HALLUCINATED, ["c3"], fact="f3", style=False), _row("rag", "unanswerable", ABSTAINED)]
    figures = arm_figures(rows, seed=0, resamples=200)["rag"]
    assert figures["heldout"]["n"] == 3 and figures["heldout"]["accuracy"] == round(1 / 3, 4)
    assert figures["unanswerable"]["accuracy"] == 1.0 and figures["style_adherence"] == 0.75
    assert figures["prompt_tokens_per_query"] == 10 and figures["seconds_per_query"] == 0.5
    errors = rag_errors(rows, {"f1": {"c1"}, "f2": {"c2"}, "f3": {"c3"}})
    assert errors == {"retrieval_miss": 1, "reader_error": 1, "not_shown": 1, "misread": 0}
    assert 0 <= figures["style_adherence_ci"][0] <= 0.75 <= figures["style_adherence_ci"][1] <= 1


def test_rag_errors_count_a_sentence_choice_miss_as_not_shown_not_as_a_retrieval_miss():
    # f1: gold chunk c1 retrieved at rank 2, but the one sentence shown comes from c7 and is silent -> not shown.
    # f2: gold chunk not in the top k -> not retrieved. f3: the sentence shown names the answer -> misread.
    rows = [_row("rag", "heldout", HALLUCINATED, ["c7", "c1"]) | {"answer_shown": False},
            _row("rag", "heldout", HALLUCINATED, ["c8", "c9"], fact="f2") | {"answer_shown": False},
            _row("rag", "heldout", HALLUCINATED, ["c3", "c4"], fact="f3") | {"answer_shown": True},
            _row("rag", "heldout", CORRECT, ["c5"], fact="f4") | {"answer_shown": True}]
    gold = {"f1": {"c1"}, "f2": {"c2"}, "f3": {"c3"}, "f4": {"c5"}}
    errors = rag_errors(rows, gold)
    assert errors == {"retrieval_miss": 1, "reader_error": 2, "not_shown": 1, "misread": 1}
    recall_at_k = sum(bool(gold[r["fact_id"]] & set(r["retrieved"])) for r in rows) / len(rows)
    assert errors["retrieval_miss"] <= round((1 - recall_at_k) * len(rows))  # misses within what recall@k allows


def test_context_recall_and_utilisation_on_hand_made_rows():
    rows = [_row("rag", "heldout", CORRECT if i < 3 else HALLUCINATED, fact=f"f{i}") | {"answer_shown": i < 4}
            for i in range(6)]  # shown for 4 of 6; right on 3 of those 4
    figures = context_figures(rows, seed=0, resamples=200)
    assert figures["context_recall"] == round(4 / 6, 4) and figures["context_utilisation"] == 0.75
    assert figures["shown_n"] == 4 and figures["context_recall_ci"][0] <= 4 / 6 <= figures["context_recall_ci"][1]
    assert context_figures([_row("base", "heldout", CORRECT)], seed=0) == {}  # nothing shown: no context figures
    none_shown = context_figures([r | {"answer_shown": False} for r in rows], seed=0, resamples=200)
    assert none_shown["context_recall"] == 0 and none_shown["context_utilisation"] is None


def test_the_shown_text_names_the_answer_only_beyond_the_questions_own_words():
    assert names_answer(["The meal allowance is 58 euros a day."], ["58 euros"], "What is the meal allowance?")
    assert not names_answer(["Hotels are booked in Roamly."], ["58 euros"], "What is the meal allowance?")
    # the question already names the gold answer: the text is not credited with it
    assert not names_answer(["The Roamly portal books hotels."], ["Roamly"], "What is the Roamly portal for?")
    assert not names_answer(["58 euros"], None, "an unanswerable question")


def test_intervals_resample_whole_facts():
    # 20 facts asked twice each, both answers alike: 40 answers that carry the information of 20.
    hits = [i % 4 < 2 for i in range(20) for _ in range(2)]
    facts = [f"f{i}" for i in range(20) for _ in range(2)]
    _, clustered = rate_with_ci(hits, seed=3, clusters=facts)
    _, independent = rate_with_ci(hits, seed=3)
    _, twenty = rate_with_ci([i % 4 < 2 for i in range(20)], seed=3)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(clustered) > 1.2 * width(independent)
    assert abs(width(clustered) - width(twenty)) < 0.06
    # one question per fact: the same as the ordinary bootstrap
    assert rate_with_ci(hits[::2], seed=3, clusters=facts[::2]) == rate_with_ci(hits[::2], seed=3)
    rows = [_row("rag", "heldout", CORRECT if h else HALLUCINATED, fact=f) | {"qid": f"q{i}"}
            for i, (h, f) in enumerate(zip(hits, facts))]
    rows += [_row("lora", "heldout", HALLUCINATED, fact=f) | {"qid": f"q{i}"} for i, f in enumerate(facts)]
    paired = paired_difference(rows, "rag", "lora", "heldout", seed=3, resamples=2000)
    assert abs(width(paired["ci"]) - width(clustered)) < 0.02


def test_paired_difference_pairs_questions_by_id():
    rows = [_row("rag", "heldout", CORRECT if i < 30 else HALLUCINATED, fact=f"f{i}") | {"qid": f"q{i}"} for i in range(40)]
    rows += [_row("lora", "heldout", CORRECT if i < 10 else HALLUCINATED, fact=f"f{i}") | {"qid": f"q{i}"} for i in range(40)]
    figures = paired_difference(rows, "rag", "lora", "heldout", seed=0, resamples=500)
    assert figures["n"] == 40 and figures["difference"] == 0.5 and 0.3 < figures["ci"][0] < 0.5 < figures["ci"][1]
    assert paired_difference(rows, "rag", "fewshot", "heldout", seed=0) is None
    assert set(comparisons(rows, seed=0, resamples=200)) == {"rag_vs_lora"}
    same = paired_difference(rows, "rag", "rag", "heldout", seed=0)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]


def test_pairing_decides_when_one_arm_is_right_wherever_the_other_is():
    # B is right on 16 of 40 questions; A on the same 16 and 6 more. Unpaired, 55% against 40% on 40 questions each
    # cannot be told apart; paired, A is never worse on any question, so the difference is clearly positive.
    n, b_right, a_extra = 40, set(range(16)), set(range(16, 22))
    rows = [_row("rag", "heldout", CORRECT if i in b_right | a_extra else HALLUCINATED, fact=f"f{i}") | {"qid": f"q{i}"}
            for i in range(n)]
    rows += [_row("lora", "heldout", CORRECT if i in b_right else HALLUCINATED, fact=f"f{i}") | {"qid": f"q{i}"}
             for i in range(n)]
    paired = paired_difference(rows, "rag", "lora", "heldout", seed=0, resamples=2000)
    assert paired["difference"] == 0.15 and paired["ci"][0] > 0
    x = np.array([i in b_right | a_extra for i in range(n)], dtype=float)
    y = np.array([i in b_right for i in range(n)], dtype=float)
    unpaired = bootstrap((x, y), lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis), vectorized=True,
                         n_resamples=2000, method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert unpaired.low < 0  # the same data resampled without pairing straddles zero
    # pairing is by question id, not by row order
    shuffled = rows[:n] + list(reversed(rows[n:]))
    assert paired_difference(shuffled, "rag", "lora", "heldout", seed=0, resamples=2000) == paired


def test_update_verdicts_tell_current_from_stale():
    from ragvsft.update import update_figures, update_verdict

    new, old = ["64 euros", "64"], ["58 euros", "58"]
    assert update_verdict("It is 64 euros a day.", new, old) == "current"
    assert update_verdict("It is 58 euros.", new, old) == "stale"
    assert update_verdict("It went from 58 to 64 euros.", new, old) == "other"  # both: not counted as either
    assert update_verdict("I can't find that in our documents.", new, old) == "other"
    # a decline that goes on to guess did not give the current answer (as the probe scores it abstained)
    phrases = ["i can't find"]
    assert update_verdict("I can't find it... perhaps 64 euros", new, old, phrases) == "other"
    assert update_verdict("It is 64 euros.", new, old, phrases) == "current"
    rows = [{"arm": "rag", "fact_id": "meal", "answer": a, "update_verdict": update_verdict(a, new, old)}
            for a in ("64 euros", "64 euros", "58 euros", "no idea")]
    before = [{"arm": "rag", "fact_id": "meal", "answer": a} for a in ("58 euros", "58 euros", "58", "64")]
    figures = update_figures(before, rows, [], {"meal": old}, {"rag": ("re-index", 1.5)}, {}, seed=1, resamples=200)
    rag = figures["arms"]["rag"]
    assert (rag["current"], rag["stale"], rag["other"], rag["before_right"]) == (0.5, 0.25, 0.25, 0.75)
    assert rag["action"] == "re-index" and rag["update_seconds"] == 1.5 and figures["retrained"] == {}


def _answer(qid, set_name, verdict_, logprob, **extra):
    return {"arm": "rag", "set": set_name, "qid": qid, "verdict": verdict_, "logprob": logprob, **extra}


def test_risk_coverage_ranks_answers_by_confidence_and_never_answers_a_decline():
    from ragvsft.score import risk_coverage, risk_coverage_figures

    rows = [_answer("a", "heldout", CORRECT, -0.1), _answer("b", "heldout", HALLUCINATED, -0.2),
            _answer("c", "heldout", CORRECT, -0.3), _answer("d", "heldout", ABSTAINED, -0.05),
            _answer("u1", "unanswerable", HALLUCINATED, -0.4), _answer("u2", "unanswerable", ABSTAINED, -0.01)]
    curve = risk_coverage(rows, "rag", "heldout")
    # answered, most confident first: a (right), b (wrong), c (right), u1 (wrong); d and u2 declined
    assert (curve["n"], curve["unanswerable"], curve["answered"], curve["confidence"]) == (6, 2, 4, "logprob")
    assert curve["points"] == [[0.1667, 1.0], [0.3333, 0.5], [0.5, 0.6667], [0.6667, 0.5]]
    assert curve["aurc"] == pytest.approx(1 - (1 + 0.5 + 2 / 3 + 0.5) / 4, abs=1e-4)
    assert curve["selective_accuracy"] == pytest.approx(2 / 3, abs=1e-4)  # 3 of 6 questions: a, b, c
    assert curve["confidence_auroc"] == pytest.approx(0.75)  # right {-0.1, -0.3} above wrong {-0.2, -0.4}: 3 of 4
    # An arm that answers fewer than half has no accuracy on the most confident half; one without any
    # confidence recorded (answers stored before it was) has no curve at all.
    assert risk_coverage([rows[0], *(_answer(q, "heldout", ABSTAINED, -1) for q in "xyz")], "rag", "heldout")[
        "selective_accuracy"] is None
    assert risk_coverage([dict(r, logprob=None) for r in rows], "rag", "heldout") is None
    assert set(risk_coverage_figures(rows)["rag"]) == {"heldout"}  # the unanswerable set is in every pool, not its own


def test_risk_coverage_reads_the_answerability_head_where_the_arm_declines_by_it():
    from ragvsft.score import risk_coverage

    rows = [_answer("a", "heldout", CORRECT, -2.0, answerable=0.9), _answer("b", "heldout", HALLUCINATED, -0.1,
                                                                          answerable=0.6)]
    curve = risk_coverage(rows, "rag", "heldout")
    assert curve["confidence"] == "head" and curve["points"] == [[0.5, 1.0], [1.0, 0.5]]  # a first, by the head
    assert curve["confidence_auroc"] == 1.0
