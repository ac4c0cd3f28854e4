"""results.json recomputed from predictions.jsonl by plain counting: every arm's rates, context recall and
utilisation, style adherence, the RAG error split, the risk-coverage curves and the paired differences must be what the stored answers say.
A figure computed from anything but the stored rows (a stale cache, a second code path) fails here."""

import json
from collections import Counter
from pathlib import Path

import pytest

from ragvsft.files import read_jsonl


def recount(rows: list[dict]) -> dict:
    """Per arm and set: n and the three rates; per arm: style adherence; per retrieving arm and set: context recall
    (among rows with something shown and a gold answer) and utilisation (correct among those whose text names it)."""
    out: dict = {}
    for row in rows:
        arm = out.setdefault(row["arm"], {"style": [], "sets": {}})
        arm["style"].append(bool(row["style_ok"]))
        arm["sets"].setdefault(row["set"], []).append(row)
    figures: dict = {}
    for name, arm in out.items():
        figures[name] = {"style_adherence": sum(arm["style"]) / len(arm["style"])}
        for set_name, asked in arm["sets"].items():
            verdicts = Counter(r["verdict"] for r in asked)
            entry = {"n": len(asked), "abstention_rate": verdicts["abstained"] / len(asked)}
            if set_name != "unanswerable":
                entry["accuracy"] = verdicts["correct"] / len(asked)
                entry["hallucination_rate"] = verdicts["hallucinated"] / len(asked)
            shown = [r for r in asked if r.get("answer_shown") is not None]
            if shown:
                named = [r for r in shown if r["answer_shown"]]
                entry["context_recall"] = len(named) / len(shown)
                entry["shown_n"] = len(named)
                if named:
                    entry["context_utilisation"] = sum(r["verdict"] == "correct" for r in named) / len(named)
            figures[name][set_name] = entry
    return figures


def assert_results_match_predictions(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    rows = read_jsonl(run_dir / "predictions.jsonl")
    counted = recount(rows)
    assert set(counted) == set(results["arms"])
    for arm, figures in counted.items():
        stored = results["arms"][arm]
        assert stored["style_adherence"] == pytest.approx(figures.pop("style_adherence"), abs=1e-4), arm
        for set_name, entry in figures.items():
            for key, value in entry.items():
                assert stored[set_name][key] == pytest.approx(value, abs=1e-4), (arm, set_name, key)
    # The RAG error split: every wrong held-out answer is counted once, misread exactly where the answer was shown.
    errors = results["retrieval"].get("rag_errors")
    if errors:
        wrong = [r for r in rows if r["arm"] == "rag" and r["set"] == "heldout" and r["verdict"] != "correct"]
        assert errors["retrieval_miss"] + errors["not_shown"] + errors["misread"] == len(wrong)
        assert errors["misread"] == sum(bool(r["answer_shown"]) for r in wrong)
        assert errors["reader_error"] == errors["not_shown"] + errors["misread"]
    # The text the arms were shown is the unit choice marked used: its context recall is the RAG arm's.
    used = [v for v in (results["retrieval"].get("unit_choices") or {}).values() if v["used"]]
    if used and "rag" in counted and "context_recall" in counted["rag"].get("heldout", {}):
        assert used[0]["heldout"] == pytest.approx(counted["rag"]["heldout"]["context_recall"], abs=1e-4)
    # Risk-coverage: the answered questions of a set and the unanswerable ones, most confident first.
    for arm, per_set in (results.get("risk_coverage") or {}).items():
        for set_name, curve in per_set.items():
            pool = [r for r in rows if r["arm"] == arm and r["set"] in (set_name, "unanswerable")]
            answered = sorted((r for r in pool if r["verdict"] != "abstained"),
                              key=lambda r: (-(r["answerable"] if r.get("answerable") is not None else r["logprob"]),
                                             r["qid"]))
            accuracy = [sum(r["verdict"] == "correct" for r in answered[:k]) / k for k in range(1, len(answered) + 1)]
            assert (curve["n"], curve["answered"]) == (len(pool), len(answered)), (arm, set_name)
            if accuracy:
                aurc = sum(1 - a for a in accuracy) / len(accuracy)
                assert curve["aurc"] == pytest.approx(aurc, abs=1e-4) == results["arms"][arm][set_name]["aurc"]
                assert [a for _, a in curve["points"]] == pytest.approx(accuracy, abs=1e-4)
    # Paired differences: accuracy of one arm minus the other's on the same questions.
    for name, comparison in results["comparisons"].items():
        if comparison is None:
            continue
        a, b = name.split("_vs_")
        mine = {arm: {r["qid"]: r["verdict"] == "correct" for r in rows if r["arm"] == arm and r["set"] == comparison["set"]}
                for arm in (a, b)}
        shared = sorted(set(mine[a]) & set(mine[b]))
        assert comparison["n"] == len(shared), name
        difference = sum(mine[a][q] - mine[b][q] for q in shared) / len(shared)
        assert comparison["difference"] == pytest.approx(difference, abs=1e-4), name


def test_recount_reads_hand_made_rows():
    rows = [{"arm": "rag", "set": "heldout", "qid": "a", "verdict": "correct", "style_ok": True, "answer_shown": True},
            {"arm": "rag", "set": "heldout", "qid": "b", "verdict": "hallucinated", "style_ok": False, "answer_shown": True},
            {"arm": "rag", "set": "heldout", "qid": "c", "verdict": "abstained", "style_ok": True, "answer_shown": False},
            {"arm": "rag", "set": "unanswerable", "qid": "u", "verdict": "abstained", "style_ok": True,
             "answer_shown": None}]
    figures = recount(rows)["rag"]
    assert figures["style_adherence"] == 0.75
    assert figures["heldout"] == {"n": 3, "abstention_rate": 1 / 3, "accuracy": 1 / 3, "hallucination_rate": 1 / 3,
                                  "context_recall": 2 / 3, "shown_n": 2, "context_utilisation": 0.5}
    assert figures["unanswerable"] == {"n": 1, "abstention_rate": 1.0}


def test_results_match_predictions_of_a_tiny_run(tiny_run_dir):
    assert_results_match_predictions(tiny_run_dir)


def test_a_tampered_result_is_caught(tiny_run_dir, tmp_path, copy_tree):
    run = copy_tree(tiny_run_dir, tmp_path / "run")
    results = json.loads((run / "results.json").read_text())
    results["arms"]["rag"]["heldout"]["accuracy"] += 0.25
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(AssertionError):
        assert_results_match_predictions(run)


@pytest.mark.slow
def test_results_match_predictions_of_the_real_run(real_run):
    assert_results_match_predictions(real_run)
