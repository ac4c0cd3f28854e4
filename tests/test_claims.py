"""The claims ledger: each rule decided against hand-made results.json fixtures, and the shipped ledger is valid."""

import copy

import pytest

from test_report import make_results
from ragvsft.claims import (CONTRADICTED, INCONCLUSIVE, NOT_TESTED, SUPPORTED, Claim, decide, evaluate_claims,
                            load_ledger)
from ragvsft.files import InputError


def verdict(results, test):
    return decide(results, Claim("a claim", "000_x.txt", test))


def with_update(results, lora_current=0.1, retrained_current=0.9, rag_stale=0.05, lora_stale=0.8):
    results = copy.deepcopy(results)
    rate = lambda current, stale: {"n": 58, "current": current, "current_ci": [max(0, current - 0.1), min(1, current + 0.1)],  # noqa: E731
                                   "stale": stale, "stale_ci": [max(0, stale - 0.1), min(1, stale + 0.1)],
                                   "other": round(1 - current - stale, 4)}
    results["update"] = {"facts_changed": 29, "questions": 58, "sets": ["heldout", "seen"],
                         "seconds": {"reindex": 4.2, "prompt": 0.01, "retrain": 95.0},
                         "arms": {"rag": rate(0.7, rag_stale) | {"before_right": 0.75, "action": "re-index",
                                                                 "update_seconds": 4.2},
                                  "lora": rate(lora_current, lora_stale) | {"before_right": 0.8, "update_seconds": 0.0,
                                                                            "action": "none: the adapter stays as trained"}},
                         "retrained": {"lora": rate(retrained_current, 0.05) | {"action": "retrain", "update_seconds": 95.0}}}
    return results


def test_a_clear_paired_difference_supports_or_contradicts():
    results = make_results(rag=0.8, lora=0.1)
    results["comparisons"] = {"rag_vs_lora": {"set": "heldout", "n": 40, "difference": 0.7, "ci": [0.55, 0.85]}}
    row = verdict(results, "rag.heldout.accuracy > lora.heldout.accuracy")
    assert row["verdict"] == SUPPORTED and "paired difference +70 points [+55, +85]" in row["figures"]
    assert "RAG held-out accuracy 80% [70%–90%]" in row["figures"]
    # the same pair read the other way round: the paired interval is turned, and the claim is contradicted
    assert verdict(results, "lora.heldout.accuracy > rag.heldout.accuracy")["verdict"] == CONTRADICTED


def test_an_interval_through_zero_is_inconclusive():
    results = make_results(rag=0.5, lora=0.45)
    results["comparisons"] = {"rag_vs_lora": {"set": "heldout", "n": 40, "difference": 0.05, "ci": [-0.1, 0.2]}}
    row = verdict(results, "rag.heldout.accuracy > lora.heldout.accuracy")
    assert row["verdict"] == INCONCLUSIVE and "includes zero" in row["reason"]
    del results["comparisons"]  # without a paired interval: the two intervals overlap
    assert verdict(results, "rag.heldout.accuracy > lora.heldout.accuracy")["verdict"] == INCONCLUSIVE
    assert verdict(make_results(rag=0.9, lora=0.1), "rag.heldout.accuracy > lora.heldout.accuracy")["verdict"] == SUPPORTED


def test_exact_figures_and_a_factor():
    results = make_results(style_lora=1.0, style_base=0.0)
    assert verdict(results, "lora.prompt_tokens_per_query < rag.prompt_tokens_per_query")["verdict"] == SUPPORTED
    assert verdict(results, "rag.prompt_tokens_per_query < lora.prompt_tokens_per_query")["verdict"] == CONTRADICTED
    results["arms"]["rag"]["style_adherence"] = 0.85
    row = verdict(results, "rag.style_adherence >= 0.8 * lora.style_adherence")
    assert row["verdict"] == SUPPORTED and "0.8 × LoRA fine-tuned style adherence 100%" in row["figures"]
    assert verdict(results, "rag.style_adherence >= 0.9 * lora.style_adherence")["verdict"] == CONTRADICTED
    results["arms"]["lora"]["seconds_per_query"] = 0.29  # against 0.3: within timing noise
    row = verdict(results, "lora.seconds_per_query < base.seconds_per_query")
    assert row["verdict"] == INCONCLUSIVE and "within 10%" in row["reason"]
    results["arms"]["lora"]["seconds_per_query"] = 0.2
    assert verdict(results, "lora.seconds_per_query < base.seconds_per_query")["verdict"] == SUPPORTED


def test_a_figure_the_run_did_not_measure_is_not_tested_with_the_reason():
    results = make_results()
    row = verdict(results, "fewshot.style_adherence > prompt.style_adherence")
    assert row["verdict"] == NOT_TESTED and "few-shot was not run" in row["reason"]
    row = verdict(results, "update.seconds.prompt < update.seconds.retrain")
    assert row["verdict"] == NOT_TESTED and "experiments/update.yaml" in row["reason"]
    assert verdict(results, "rag.reverse.accuracy > lora.reverse.accuracy")["verdict"] == NOT_TESTED
    untested = decide(results, Claim("x", "001_y.txt", None, "a classification task"))
    assert untested["verdict"] == NOT_TESTED and untested["reason"] == "a classification task"


def test_the_update_rules():
    results = with_update(make_results())
    assert verdict(results, "update.retrained.lora.current > update.arms.lora.current")["verdict"] == SUPPORTED
    assert verdict(results, "update.arms.lora.stale > update.arms.rag.stale")["verdict"] == SUPPORTED
    row = verdict(results, "update.seconds.prompt < update.seconds.retrain")
    assert row["verdict"] == SUPPORTED and "seconds to retrain 95 s" in row["figures"]
    fixed = with_update(make_results(), lora_current=0.85, lora_stale=0.05)  # an adapter that somehow kept up
    assert verdict(fixed, "update.retrained.lora.current > update.arms.lora.current")["verdict"] == INCONCLUSIVE
    assert verdict(fixed, "update.arms.lora.stale > update.arms.rag.stale")["verdict"] == INCONCLUSIVE


def test_break_even_never_counts_as_infinite():
    results = make_results()
    assert verdict(results, "cost.break_even_vs_rag.lora < inf")["verdict"] == SUPPORTED
    results["arms"]["lora"]["prompt_tokens_per_query"] = 4000.0  # longer prompts than RAG: never breaks even
    row = verdict(results, "cost.break_even_vs_rag.lora < inf")
    assert row["verdict"] == CONTRADICTED and "never" in row["figures"]
    assert verdict(results, "cost.break_even_vs_rag.lora > 1000")["verdict"] == SUPPORTED


def test_the_shipped_ledger_covers_every_article_and_decides_a_full_fixture():
    from pathlib import Path

    seeds = Path(__file__).resolve().parents[2] / "shared" / "seeds"
    ledger = load_ledger()
    sources = {c.source for c in ledger}
    assert len(sources) == 4 and len(ledger) >= 15
    if seeds.is_dir():
        assert sources <= {p.name for p in seeds.iterdir()}
    rows = evaluate_claims(with_update(make_results()), ledger)
    assert [r["claim"] for r in rows] == [c.claim for c in ledger]
    assert {r["verdict"] for r in rows} >= {SUPPORTED, NOT_TESTED}
    assert all(r["verdict"] == NOT_TESTED for r, c in zip(rows, ledger) if c.test is None)


@pytest.mark.parametrize("text, expected", [
    ("- claim: x\n  source: a.txt\n", ":1: give either 'test'"),
    ("- claim: x\n  source: a.txt\n  test: rag is better\n", ":1: 'test' must read 'A > B'"),
    ("- claim: x\n  source: a.txt\n  untested: why\n- claim: y\n  test: a > b\n", ":4: missing key 'source'"),
    ("- claim: x\n  source: a.txt\n  untested: why\n  colour: red\n", ":1: unknown key 'colour'"),
    ("claim: x\n", ":1: the ledger must be a list"),
])
def test_a_broken_ledger_names_file_and_line(tmp_path, text, expected):
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_ledger(path)
    assert any(expected in p for p in exc.value.problems), exc.value.problems


def test_no_rule_compares_what_no_run_could_contradict():
    # Building a few-shot list against training a model: no run could ever find the list slower, so it tests nothing.
    assert not [c.claim for c in load_ledger() if c.test and "update.seconds.prompt" in c.test]


def test_the_update_claims_can_go_either_way():
    claims = {c.claim: c for c in load_ledger()}
    prompting = claims["Prompting is trivially updatable — change a line of text and you've changed the behavior."]
    instantly = claims["You can change prompts instantly and see results right away."]
    good = with_update(make_results(), lora_current=0.1, rag_stale=0.05)
    bad = with_update(make_results(), lora_current=0.9, rag_stale=0.9)
    assert [decide(good, c)["verdict"] for c in (prompting, instantly)] == [SUPPORTED, SUPPORTED]
    assert [decide(bad, c)["verdict"] for c in (prompting, instantly)] == [CONTRADICTED, CONTRADICTED]
