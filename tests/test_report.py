"""Reports come from results.json alone; findings follow the numbers; document and model text is escaped."""

import json

import pytest

from ragvsft.cost import cost_table, run_costs
from ragvsft.presentation.html import render_html
from ragvsft.presentation.plots import write_plots
from ragvsft.presentation.publish import write_reports
from ragvsft.presentation.report import findings, render_markdown, results_csv


def set_figs(acc, n=40, width=0.1, unanswerable=False):
    ci = [round(max(0, acc - width), 4), round(min(1, acc + width), 4)]
    hal = round(1 - acc, 4)
    return {"n": n, "accuracy": acc, "accuracy_ci": ci, "hallucination_rate": hal,
            "hallucination_rate_ci": [max(0, hal - width), min(1, hal + width)], "abstention_rate": 0.0,
            "abstention_rate_ci": [0.0, 0.0]}


def make_results(rag=0.8, lora=0.1, lora_seen=0.9, style_lora=1.0, style_base=0.0):
    arm = lambda held, seen, style, prompt: {"heldout": set_figs(held), "seen": set_figs(seen),  # noqa: E731
                                             "unanswerable": set_figs(0.2), "style_adherence": style,
                                             "prompt_tokens_per_query": prompt, "generated_tokens_per_query": 20.0,
                                             "seconds_per_query": 0.3}
    return {
        "corpus": {"name": "acme", "organisation": "Acme <b>Ltd</b>", "sha256": "ab" * 32, "documents": 3, "facts": 40,
                   "unanswerable": 10, "facts_in_corpus": 40},
        "run": {"name": "t", "seed": 1, "lm": "smollm2", "embedder": "minilm", "dtype": "float32", "questions": 90,
                "sets": {"heldout": 40, "seen": 40, "unanswerable": 10}},
        "arms": {"base": arm(0.0, 0.0, style_base, 40.0), "rag": arm(rag, rag, 0.1, 400.0),
                 "lora": arm(lora, lora_seen, style_lora, 40.0)},
        "retrieval": {"queries": 40, "recall_at": {"1": 0.5, "3": 0.8}, "mrr": 0.6, "k": 3, "chunks": 10,
                      "rag_errors": {"retrieval_miss": 3, "reader_error": 5}},
        "training": {"examples": 160, "epochs": 2, "steps": 40, "trainable_params": 100, "total_params": 10000,
                     "trainable_share": 0.01, "seconds": 3600.0, "seconds_per_example": 0.5, "loss": [[1, 3.0], [40, 1.0]]},
        "timings": {"index": 1.0, "finetune": 100.0, "probe": 50.0, "score": 0.2},
    }


def test_findings_support_the_claim_when_the_numbers_do():
    text = " ".join(findings(make_results()))
    assert "RAG answered 80% of held-out questions correctly against 10%" in text
    assert "RAG is clearly better" in text and "supports the claim" in text
    assert "Fine-tuning taught the house style: 100%" in text
    assert "memorised phrasings" in text and "3 were retrieval misses" in text


def test_findings_say_so_when_fine_tuning_wins():
    text = " ".join(findings(make_results(rag=0.2, lora=0.7, style_lora=0.0)))
    assert "Fine-tuning recalled held-out facts better than retrieval" in text
    assert "does not support the claim:" in text and "fine-tuning did not raise style adherence" in text


def test_findings_with_overlapping_intervals():
    text = " ".join(findings(make_results(rag=0.5, lora=0.45)))
    assert "cannot tell them apart" in text and "cannot separate retrieval from fine-tuning" in text
    whole = make_results(rag=0.5, lora=0.45)
    whole["corpus"]["facts_in_corpus"] = whole["corpus"]["facts"]  # already the whole corpus: no larger profile to offer
    sample = make_results(rag=0.5, lora=0.45)
    sample["corpus"]["facts_in_corpus"] = sample["corpus"]["facts"] + 1
    assert "only more facts or probe questions" in " ".join(findings(whole))
    assert "experiments/full.yaml" in " ".join(findings(sample))


def test_findings_prefer_the_paired_interval():
    results = make_results(rag=0.5, lora=0.4)  # the arms' own intervals overlap ...
    results["comparisons"] = {"rag_vs_lora": {"set": "heldout", "n": 40, "difference": 0.1, "ci": [0.025, 0.2]}}
    text = " ".join(findings(results))  # ... but the paired difference excludes zero
    assert "difference +10 points, 95% paired interval +2 to +20" in text and "RAG is clearly better" in text


def test_findings_when_every_arm_abstains_alike():
    assert "every arm abstained 20% of the time" in " ".join(findings(make_results()))


def test_markdown_and_csv_come_from_the_results(tmp_path):
    results = make_results()
    md = render_markdown(results)
    assert "| RAG " in md and "80% [70%–90%]" in md and "recall@3 | 80%" in md and "Ovadia" in md
    assert "breaks even against RAG at" in md
    lines = results_csv(results).splitlines()
    assert lines[0].startswith("arm,set,n,accuracy") and len(lines) == 1 + 3 * 3


def test_cost_break_even_against_hand_computed_numbers():
    # RAG: 400 prompt + 20 generated tokens; LoRA: 40 + 20; training took one hour. Default prices: 0.20 and 0.60 USD
    # per million tokens, 2 USD per training hour, 50 USD hosting, one retrain a month.
    table = cost_table(make_results(), run_costs(make_results(), queries_per_month=1000))
    rag, lora = table["arms"]["rag"], table["arms"]["lora"]
    assert rag["cost_per_query"] == pytest.approx(92e-6) and lora["cost_per_query"] == pytest.approx(20e-6)
    assert rag["fixed_per_month"] == 0 and lora["fixed_per_month"] == 52.0
    assert rag["monthly"] == pytest.approx(0.092) and lora["monthly"] == pytest.approx(52.02)
    assert table["break_even_vs_rag"]["lora"] == 722_222  # 52 / 72e-6
    cheap = cost_table(make_results(), run_costs(make_results(), queries_per_month=1000, finetuned_hosting_per_month=10.0,
                                                 retrains_per_month=2.0))
    assert cheap["arms"]["lora"]["fixed_per_month"] == 14.0 and cheap["break_even_vs_rag"]["lora"] == 194_444


def test_cost_command_takes_the_prices_it_is_given(tmp_path):
    from typer.testing import CliRunner

    from ragvsft.cli import app

    (tmp_path / "results.json").write_text(json.dumps(make_results()))
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "complete", "files": ["results.json"]}))
    default = CliRunner().invoke(app, ["cost", str(tmp_path), "--queries-per-month", "1000"])
    assert default.exit_code == 0 and "breaks even against RAG at 722,222 queries per month" in default.output
    hosted = CliRunner().invoke(app, ["cost", str(tmp_path), "--queries-per-month", "1000", "--hosting", "10"])
    assert hosted.exit_code == 0 and "breaks even against RAG at 166,667 queries per month" in hosted.output
    assert "|                    12 |           12.02 |" in hosted.output  # 10 hosting + 2 training, + 0.02 queries


def test_html_escapes_document_and_model_text(tmp_path):
    results = make_results()
    evil = "<script>alert('x')</script>"
    predictions = [{"arm": "rag", "set": "heldout", "qid": "q1", "question": f"What is {evil}?", "gold": [evil],
                    "answer": f"It is {evil}", "verdict": "hallucinated", "style_ok": False, "retrieved": ["d.md#0"]}]
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "chunks.jsonl").write_text(json.dumps({"id": "d.md#0", "document": "d.md", "start": 0, "end": 5,
                                                                 "text": f"Document says {evil}"}) + "\n")
    page = render_html(results, predictions, write_plots(tmp_path / "plots", results), tmp_path)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page and "Document says &lt;script&gt;" in page
    assert "Acme &lt;b&gt;Ltd&lt;/b&gt;" in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count("data:image/png;base64,") == 6  # every plot embedded, none linked


def test_write_reports_writes_every_file(tmp_path):
    write_reports(tmp_path, make_results(), [])
    for name in ("results.csv", "report.md", "report.html", "plots/rates_heldout.png", "plots/training_loss.png",
                 "plots/style_vs_facts.png", "plots/retrieval_recall.png", "plots/seen_vs_heldout.png"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_learning_curve_is_plotted_and_described(tmp_path):
    results = make_results()
    results["curves"] = [
        {"epoch": 0.0, "seen": 0.0, "heldout": 0.0, "unanswerable_hallucination": 0.9, "style": 0.0, "loss": None},
        {"epoch": 2.0, "seen": 0.5, "heldout": 0.1, "unanswerable_hallucination": 1.0, "style": 0.9, "loss": 0.5},
        {"epoch": 4.0, "seen": 0.95, "heldout": 0.2, "unanswerable_hallucination": 1.0, "style": 1.0, "loss": 0.05}]
    text = " ".join(findings(results))
    assert ("went from 0% to 95% on questions it was trained on and from 0% to 20% on the same facts asked in new "
            "words; on questions nobody can answer it hallucinated 90% before and 100% after") in text
    assert "less than half of that carried over" in text
    results["curves"][-1]["seen"] = 0.6
    assert "did not learn its own training set" in " ".join(findings(results))
    write_reports(tmp_path, results, [])
    assert (tmp_path / "plots" / "learning_curve.png").stat().st_size > 0
    assert "| 4.0 | 60% | 20% | 100% | 100% | 0.050 |" in (tmp_path / "report.md").read_text()
    assert "learning_curve" in (tmp_path / "report.html").read_text()


def test_the_catalogue_drives_every_label(tmp_path, monkeypatch):
    from ragvsft import catalogue

    monkeypatch.setitem(catalogue.LABELS, "rag", "Retrieval <i>arm</i>")
    monkeypatch.setitem(catalogue.SHORT_LABELS, "lora", "LORA-SHORT")
    results = make_results()
    write_reports(tmp_path, results, [])
    assert "Retrieval <i>arm</i>" in (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "Retrieval &lt;i&gt;arm&lt;/i&gt;" in html and "Retrieval <i>arm</i>" not in html
    assert any("Retrieval <i>arm</i> answered" in s for s in findings(results))
    captured = []
    monkeypatch.setattr("matplotlib.axes.Axes.set_xticks", lambda self, ticks, labels=None, **k: captured.extend(labels or []))
    write_plots(tmp_path / "again", results)
    assert "LORA-SHORT" in captured


def test_the_raft_finding_states_what_the_reader_learnt_on():
    results = make_results(rag=0.2)
    results["arms"]["raft"] = dict(results["arms"]["rag"], heldout=set_figs(0.5), unanswerable=set_figs(0.7))
    results["arms"]["raft"]["heldout"]["abstention_rate"] = 0.1
    results["comparisons"] = {"raft_vs_rag": {"set": "heldout", "n": 40, "difference": 0.3, "ci": [0.15, 0.45]}}
    results["reader"] = {"folds": 2, "trained_on_facts": [94, 94]}
    sentence = next(s for s in findings(results) if s.startswith("RAFT reader answered"))
    assert "+30 points" in sentence and "RAFT reader is clearly better" in sentence
    assert "2 cross-fitted folds" in sentence and "94 and 94 other facts" in sentence
    assert "abstained on 70% of unanswerable questions and on 10% of answerable held-out ones" in sentence
    assert "context-aware" not in sentence  # a run config without the setting says nothing of it
    results["config"] = {"probe": {"raft_contrast": 1.0}}
    assert "It decodes context-aware (weight 1)" in next(s for s in findings(results) if s.startswith("RAFT reader"))
    results["config"] = {"probe": {"raft_contrast": 0.0}}  # plain greedy decoding
    assert "context-aware" not in next(s for s in findings(results) if s.startswith("RAFT reader"))


def test_the_run_config_cost_section_sets_the_table_and_flags_override_it():
    results = make_results()
    results["config"] = {"cost": dict(run_costs({}).model_dump(), queries_per_month=1000, finetuned_hosting_per_month=10.0)}
    assert cost_table(results)["arms"]["lora"]["fixed_per_month"] == 12.0  # 10 hosting + one 2-USD training hour
    assert "1,000 queries per month" in render_markdown(results)
    assert run_costs(results, finetuned_hosting_per_month=30.0).finetuned_hosting_per_month == 30.0
    assert run_costs(results, finetuned_hosting_per_month=None).finetuned_hosting_per_month == 10.0


def test_cost_refuses_a_price_that_is_not_a_number(tmp_path):
    from typer.testing import CliRunner

    from ragvsft.cli import app

    result = CliRunner().invoke(app, ["cost", str(tmp_path), "--hosting", "inf"])
    assert result.exit_code == 2 and "--hosting: inf is not a finite number" in result.output


def test_reports_show_the_claims_ledger_and_the_knowledge_update(tmp_path):
    from test_claims import with_update

    results = with_update(make_results())
    results["arms"]["lora"]["style_adherence"] = 0.97
    md = render_markdown(results)
    assert "## Claims ledger" in md and "`001_186768655c1970b0.txt`" in md and "**not tested**" in md
    ledger = md.split("## Claims ledger", 1)[1].split("##", 1)[0]
    assert "| LoRA fine-tuned style adherence 97% vs prompting" not in ledger  # no prompt arm: not tested, with reason
    assert "the arm prompting was not run" in ledger
    assert "## Knowledge update" in md and "| LoRA fine-tuned | after retraining | retrain | 95 |" in md
    assert "retraining the adapter on the new version took 95 s" in " ".join(findings(results)).lower()
    write_reports(tmp_path, results, [])
    html = (tmp_path / "report.html").read_text()
    assert 'id="claims"' in html and 'id="update"' in html and "verdict-supported" in html
    assert (tmp_path / "plots" / "update.png").stat().st_size > 1000
    assert "update" not in write_plots(tmp_path / "no-update", make_results())


@pytest.mark.parametrize("silent, seen, verdict", [(0.18, 0.12, "barely"), (0.6, 0.1, "apart"), (0.0, 0.0, "never")])
def test_the_raft_finding_says_whether_the_reader_tells_silent_text_apart(silent, seen, verdict):
    results = make_results(rag=0.2)
    results["arms"]["raft"] = dict(results["arms"]["rag"], heldout=set_figs(0.3), seen=set_figs(0.6))
    results["arms"]["raft"]["seen"]["abstention_rate"] = seen
    results["comparisons"] = {"raft_vs_rag": {"set": "heldout", "n": 40, "difference": 0.1, "ci": [-0.05, 0.25]}}
    results["reader"] = {"folds": 1, "trained_on_facts": [148], "silent_abstained": silent, "abstain_by": "head"}
    sentence = next(s for s in findings(results) if s.startswith("RAFT reader answered"))
    assert f"declined {round(100 * silent)}% of the time" in sentence
    assert ("barely tells a silent passage from an answering one" in sentence) is (verdict == "barely")
    assert (f"against {round(100 * seen)}% when shown the retrieved text" in sentence) is (verdict == "apart")
    assert ("it has not learnt to decline" in sentence) is (verdict == "never")
    assert "answerability head on its hidden state" in sentence


def test_the_unanswerable_plot_draws_each_rate_once(tmp_path, monkeypatch):
    import matplotlib.axes

    from ragvsft.presentation.plots import plot_rates

    drawn = []
    real_bar = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, xs, heights, *a, **k: (
        drawn.append((k.get("label"), list(heights))), real_bar(self, xs, heights, *a, **k))[1])
    results = make_results()
    assert plot_rates(results, "unanswerable", tmp_path / "u.png")
    labels = [label for label, _ in drawn]
    assert len(labels) == 2 and "abstained (right)" in labels  # accuracy there is the share abstained: not twice
    drawn.clear()
    assert plot_rates(results, "heldout", tmp_path / "h.png") and len(drawn) == 3


def test_findings_and_the_ledger_decide_a_comparison_alike():
    from ragvsft.claims import Claim, decide

    for rag, lora, paired in ((0.8, 0.1, None), (0.5, 0.45, None), (0.5, 0.4, [0.02, 0.18]), (0.3, 0.5, [-0.3, -0.1])):
        results = make_results(rag=rag, lora=lora)
        if paired:
            results["comparisons"] = {"rag_vs_lora": {"set": "heldout", "n": 40, "difference": rag - lora, "ci": paired}}
        verdict = decide(results, Claim("c", "s", "rag.heldout.accuracy > lora.heldout.accuracy"))["verdict"]
        text = " ".join(findings(results))
        said = ("RAG is clearly better" in text, "LoRA fine-tuned is clearly better" in text)
        assert said == (verdict == "supported", verdict == "contradicted"), (rag, lora, paired, verdict)


def test_the_rag_error_finding_splits_where_answers_were_lost():
    results = make_results()
    results["retrieval"]["rag_errors"] = {"retrieval_miss": 2, "reader_error": 9, "not_shown": 6, "misread": 3}
    text = " ".join(findings(results))
    assert "2 were not retrieved" in text and "6 were retrieved but the text shown did not name the answer" in text
    assert "3 were shown the answer and still got it wrong" in text


def test_the_unit_choice_finding_names_what_was_shown_and_the_best_other_choice():
    results = make_results()
    results["retrieval"]["k"] = 3
    entry = lambda used, heldout, development, words: {"used": used, "heldout": heldout, "development": development,  # noqa: E731
                                                       "words": words}
    results["retrieval"]["unit_choices"] = {
        "best unit": entry(True, 0.7, 0.64, 28.2), "best two units": entry(False, 0.82, 0.77, 55.1),
        "best unit of the first chunk": entry(False, 0.8, 0.63, 28.3), "whole chunks": entry(False, 0.98, 0.86, 146.8)}
    text = " ".join(findings(results))
    assert "(best unit, 28 words) named the answer for 70% of held-out questions" in text
    assert "top-3 chunks whole held it for 98% (147 words)" in text
    # chosen by the development figure, not the held-out one (where the first chunk's unit would win)
    assert "On development questions it named it for 64%; the best other choice of units, best two units (55 words), " \
        "for 77%" in text
    del results["retrieval"]["unit_choices"]
    assert "named the answer" not in " ".join(findings(results))


def test_the_verdict_credits_retrieval_when_only_the_reader_taught_to_read_beats_fine_tuning():
    results = make_results(rag=0.5, lora=0.45)
    results["arms"]["raft"] = {**results["arms"]["rag"], "heldout": set_figs(0.8)}
    text = " ".join(findings(results))
    assert "supplies the facts when the reader is taught to read" in text and "cannot separate" not in text
    results["arms"]["raft"]["heldout"] = set_figs(0.5)  # no clearer than plain RAG: the verdict stays undecided
    assert "cannot separate retrieval from fine-tuning" in " ".join(findings(results))


def test_the_gate_table_and_finding_read_results_json():
    results = make_results()
    point = lambda t, a, u, acc: {"threshold": t, "answerable_declined": a, "unanswerable_declined": u,  # noqa: E731
                                  "accuracy": acc}
    model = {"signals": ["grounding", "support"], "mean": [0.7, 0.6], "scale": [0.2, 0.1], "coef": [0.32, 0.46],
             "intercept": 0.8}
    results["gate"] = {"max_declined": 0.2, "signals": ["grounding", "support"], "folds": 1, "fold_facts": [[]],
                       "development_answerable": 80, "development_unanswerable": 35,
                       "arms": {"rag": {"thresholds": [0.6], "folds": [{
                           "threshold": 0.6, "answerable": 80, "unanswerable": 35, "from_development_questions": 115,
                           "from_other_folds": 0, "model": model,
                           "table": [point(0.0, 0.0, 0.0, 0.5), point(0.6, 0.175, 0.457, 0.475)]}]}}}
    results["arms"]["rag"]["unanswerable"]["accuracy"] = 0.6
    results["arms"]["rag"]["heldout"]["abstention_rate"] = 0.175
    text = " ".join(findings(results))
    assert "at most 20% of the answerable ones" in text and "RAG 60% of unanswerable and 18% of answerable" in text
    assert "Declining by how much of the answer the text shown holds and how close the text shown is" in text
    markdown = render_markdown(results)
    assert "## Declines calibrated on development questions" in markdown
    assert "logistic\nregression of the signals grounding and support" in markdown
    assert ("| RAG | 1 | 0.6 | grounding +0.32, support +0.46 | 80 + 35 unanswerable | 18% | 46% | 48% |"
            in markdown)
