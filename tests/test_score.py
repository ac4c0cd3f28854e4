"""Scoring: normalisation, aliases, numbers, abstention, style markers, bootstrap intervals."""

import pytest

from ragvsft.score import (ABSTAINED, CORRECT, HALLUCINATED, arm_figures, comparisons, follows_style, mentions,
                           normalize, paired_difference, rag_errors, rate_with_ci, set_figures, verdict)

ABSTAIN = ["I can't find that in our documents", "i don't know"]


def test_normalize_keeps_number_punctuation_only():
    assert normalize("The HX-40 lifts 1,140 kg — at 0.35 m/s!") == "the hx 40 lifts 1,140 kg at 0.35 m s"
    assert normalize("Ｆｕｌｌ-width ＡＢＣ") == "full width abc"  # NFKC
    assert normalize("10:00 to 15:00.") == "10:00 to 15:00"


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
    assert errors == {"retrieval_miss": 1, "reader_error": 1}


def test_paired_difference_pairs_questions_by_id():
    rows = [_row("rag", "heldout", CORRECT if i < 30 else HALLUCINATED) | {"qid": f"q{i}"} for i in range(40)]
    rows += [_row("lora", "heldout", CORRECT if i < 10 else HALLUCINATED) | {"qid": f"q{i}"} for i in range(40)]
    figures = paired_difference(rows, "rag", "lora", "heldout", seed=0, resamples=500)
    assert figures["n"] == 40 and figures["difference"] == 0.5 and 0.3 < figures["ci"][0] < 0.5 < figures["ci"][1]
    assert paired_difference(rows, "rag", "fewshot", "heldout", seed=0) is None
    assert set(comparisons(rows, seed=0, resamples=200)) == {"rag_vs_lora"}
    same = paired_difference(rows, "rag", "rag", "heldout", seed=0)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0]
