"""Tables and reports generated from `results.json` alone: results.csv, report.md, report.html, plots/*.png.

    ragvsft report runs/quick        # regenerate every report file of a finished run

Every figure comes from the results file; every sentence of the findings is computed from those figures, so a run
that contradicts the literature says so.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from jinja2 import Environment, PackageLoader
from tabulate import tabulate

from ..catalogue import LABELS, label
from ..claims import CONTRADICTED, SUPPORTED, Claim, decide, evaluate_claims
from ..files import InputError, read_json, read_jsonl, require_complete_run
from ..metrics import METRIC, METRICS, SETS, TABLE, column_label

ARM_LABELS = LABELS  # from the catalogue
SET_LABELS = {s.name: s.long for s in SETS}

# Published reference points (../shared/docs/literature.md); shown beside the run's figures, never mixed into them.
LITERATURE = [
    ("Ovadia et al. 2024 (EMNLP)", "Mistral-7B, 910 MCQ on new events", "base .481, RAG .875, fine-tuned .504 (paraphrases .588), FT+RAG .810"),
    ("Gekhman et al. 2024 (EMNLP)", "PaLM 2, closed-book QA", "fine-tuning on unknown facts raises hallucination: 37.5 → 25.8 accuracy at convergence"),
    ("Soudani et al. 2024 (SIGIR-AP)", "12 models 80M–11B, PopQA", "RAG beats fine-tuning by a wide margin, most for rare entities; FT+RAG helps small models"),
    ("Allen-Zhu & Li 2023", "synthetic biographies", "one phrasing per fact: ≈10% held-out QA; five rewrites: ≈96%"),
    ("Berglund et al. 2023", "fine-tuning on “A is B”", "≈0% on “B is A” questions (the reversal curse)"),
]


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def pct_ci(figures: dict | None, key: str = "accuracy") -> str:
    if not figures:
        return "–"
    low, high = figures[f"{key}_ci"]
    return f"{pct(figures[key])} [{pct(low)}–{pct(high)}]"


def comparison_rows(results: dict) -> list[dict]:
    """One row per arm with the figures every report shows (strings, ready for any table renderer)."""
    return [{"arm": label(arm), **{column_label(metric, set_name): _cell(f, metric, set_name) for metric, set_name in TABLE}}
            for arm, f in results["arms"].items()]


def _cell(figures: dict, metric: str, set_name: str | None) -> str:
    """One figure as the comparison table writes it: a share with its interval per set, an arm's share alone, counts
    and seconds in their units."""
    m = METRIC[metric]
    if set_name is not None:
        return pct_ci(figures.get(set_name), metric)
    value = figures.get(metric)
    if value is None:
        return "–"
    return pct(value) if m.unit == "share" else f"{value:.2f}" if m.unit == "seconds" else f"{value:.0f}"


def claims_of(results: dict) -> list[dict]:
    """The ledger's verdicts as decided when results.json was written (publish.write_reports), else decided now."""
    return results["claims"] if "claims" in results else evaluate_claims(results)


def context_rows(results: dict) -> list[dict]:
    """Context recall and utilisation per retrieving arm and answerable set (score.context_figures), as strings."""
    rows = []
    for arm, f in results["arms"].items():
        for set_name, s in f.items():
            if isinstance(s, dict) and s.get("context_recall") is not None:
                rows.append({"arm": label(arm), "set": SET_LABELS.get(set_name, set_name),
                             "context recall": pct_ci(s, "context_recall"),
                             "context utilisation": pct_ci(s, "context_utilisation")
                             if s.get("context_utilisation") is not None else "–"})
    return rows


def selective_rows(results: dict) -> list[dict]:
    """The risk-coverage table (results.json `risk_coverage`, score.risk_coverage): per arm and answerable set, what
    it answered, its AURC, its accuracy on the most confident half and how well its confidence ranks right answers."""
    rows = []
    for arm, per_set in (results.get("risk_coverage") or {}).items():
        for set_name, f in per_set.items():
            auroc = f.get("confidence_auroc")
            rows.append({"arm": label(arm), "set": f"{SET_LABELS.get(set_name, set_name)} + unanswerable",
                         "confidence": "answerability head" if f["confidence"] == "head" else "answer log-prob",
                         "answered": pct(f["answered"] / f["n"]) if f["n"] else "–",
                         "AURC (lower is better)": "–" if f.get("aurc") is None else f"{f['aurc']:.3f}",
                         "accuracy, most confident half": pct(f.get("selective_accuracy")),
                         "confidence AUROC": "–" if auroc is None else f"{auroc:.2f}"})
    return rows


SIGNAL_WORDS = {"grounding": "how much of the answer the text shown holds",
                "support": "how close the text shown is to the question",
                "retrieval": "how close the best retrieved chunk is to the question",
                "margin": "how far the best retrieved sentence or row stands above the runner-up",
                "rank": "the retrieval rank of the chunk that holds the best sentence or row"}


def gate_rows(results: dict) -> list[dict]:
    """The decline gate's table (results.json `gate`, gate.py): per gated arm and fold, the threshold chosen on
    development questions and what it declined there."""
    rows = []
    for arm, figures in ((results.get("gate") or {}).get("arms") or {}).items():
        for i, fold in enumerate(figures["folds"]):
            declines = fold.get("declines", True)  # a run made before gate.min_questions always declined
            point = (next(p for p in fold["table"] if p["threshold"] == fold["threshold"]) if declines
                     else fold["ungated"])
            rows.append({"arm": label(arm), "fold": str(i + 1),
                         "threshold": f"{fold['threshold']:.3g}" if declines else "none (too little evidence)",
                         "signal weights": _weights(fold.get("model")),
                         "development questions": f"{fold['answerable']} + {fold['unanswerable']} unanswerable",
                         "answerable declined": pct(point["answerable_declined"]),
                         "unanswerable declined": pct(point["unanswerable_declined"]),
                         "accuracy": pct(point["accuracy"])})
    return rows


def _weights(model: dict | None) -> str:
    """A fitted gate's weights per standardised signal ("grounding +0.41, support +0.87"); grounding alone without one."""
    if not model:
        return "grounding (as is)"
    return ", ".join(f"{name} {weight:+.2f}" for name, weight in zip(model["signals"], model["coef"]))


def _finding_gate(results: dict) -> list[str]:
    """How often the gated arms declined the scored questions, with what their thresholds were chosen on."""
    gated = (results.get("gate") or {}).get("arms") or {}
    arms = results["arms"]
    parts = [f"{label(arm)} {pct(arms[arm]['unanswerable']['accuracy'])} of unanswerable and "
             f"{pct(arms[arm]['heldout']['abstention_rate'])} of answerable held-out questions"
             for arm in gated if arms.get(arm, {}).get("unanswerable") and arms[arm].get("heldout")]
    if not parts:
        return []
    limit = results["gate"]["max_declined"]
    signals = " and ".join(SIGNAL_WORDS[s] for s in results["gate"].get("signals", ["grounding"]))
    # folds whose development questions did not show that the gate can tell answerable from unanswerable (gate.why_not)
    idle = [f"{label(arm)} (fold {i + 1}: {fold['why_not']})" for arm, figures in gated.items()
            for i, fold in enumerate(figures["folds"]) if fold.get("declines") is False]
    held_back = (f" Where the development questions did not show that the gate can tell the two kinds apart, it "
                 f"declined nothing, and an arm declined only by its own answer: {'; '.join(idle)}." if idle else "")
    return [f"Declining by {signals} (a gate fitted, and its threshold chosen, on development questions to decline "
            f"at most {pct(limit)} of the answerable ones there), the retrieving arms declined: {'; '.join(parts)}."
            + held_back]


def _side(results: dict, test: str) -> int:
    """+1 when `test` ("A > B", as in claims.yaml) clearly holds, -1 when clearly not, 0 when this run cannot tell:
    decided by the claims ledger's one rule (`claims.decide`: the paired interval of the difference where results.json
    has it, else whether the two figures' own intervals overlap, else the exact figures)."""
    verdict = decide(results, Claim(test, "", test))["verdict"]
    return {SUPPORTED: 1, CONTRADICTED: -1}.get(verdict, 0)


def _separation(results: dict, a: str, b: str) -> int:
    """+1 when arm a is clearly more accurate on held-out questions than arm b, -1 when clearly less, 0 when unclear."""
    return _side(results, f"{a}.heldout.accuracy > {b}.heldout.accuracy")


def _compare(results: dict, a: str, b: str) -> str:
    """A sentence comparing two arms' held-out accuracy, saying whether the difference is clear."""
    fa, fb = results["arms"][a]["heldout"], results["arms"][b]["heldout"]
    name_a, name_b = label(a), label(b)
    sentence = f"{name_a} answered {pct(fa['accuracy'])} of held-out questions correctly against {pct(fb['accuracy'])} for {name_b}"
    paired = results.get("comparisons", {}).get(f"{a}_vs_{b}")
    if paired:
        low, high = paired["ci"]
        sentence += f" (difference {100 * paired['difference']:+.0f} points, 95% paired interval {100 * low:+.0f} to {100 * high:+.0f})"
    side = _separation(results, a, b)
    if side == 0:
        return sentence + "; this run cannot tell them apart."
    return sentence + f"; {name_a if side > 0 else name_b} is clearly better."


def _learning_curve_sentence(curve: list[dict]) -> str:
    first, last = curve[0], curve[-1]
    sentence = (f"During training (learning curve, epoch {first['epoch']:g} to {last['epoch']:g}) the closed-book model went "
                f"from {pct(first['seen'])} to {pct(last['seen'])} on questions it was trained on and from "
                f"{pct(first['heldout'])} to {pct(last['heldout'])} on the same facts asked in new words")
    if first.get("unanswerable_hallucination") is not None and last.get("unanswerable_hallucination") is not None:
        sentence += (f"; on questions nobody can answer it hallucinated {pct(first['unanswerable_hallucination'])} "
                     f"before and {pct(last['unanswerable_hallucination'])} after")
    if last["seen"] is not None and last["seen"] < 0.8:
        return sentence + " — it did not learn its own training set, so its held-out figures say little about fine-tuning."
    if last["seen"] is not None and last["heldout"] is not None and last["heldout"] < 0.5 * last["seen"]:
        return sentence + " — it learnt its training set, but less than half of that carried over to new wording."
    return sentence + "."


# How many more points a reader must decline on silent contexts than on retrieved ones to count as telling them apart.
DISCERNS = 0.10


def _reader_sentence(results: dict) -> str:
    """What the RAFT reader was and was not trained on, and how often it declined, both ways."""
    reader, raft = results.get("reader") or {}, results["arms"]["raft"]
    sentence = ""
    if reader:
        sentence = (f"The RAFT reader{'s' if reader['folds'] > 1 else ''} ({reader['folds']} cross-fitted "
                    f"fold{'s' if reader['folds'] > 1 else ''}) learnt to read on train questions of "
                    f"{' and '.join(str(n) for n in reader['trained_on_facts'])} other facts with their retrieved chunks, "
                    f"never on the facts {'they were' if reader['folds'] > 1 else 'it was'} asked about nor on a "
                    "paragraph or table row that holds their evidence.")
        weight = ((results.get("config") or {}).get("probe") or {}).get("raft_contrast")
        if weight:
            sentence += (f" It decodes context-aware (weight {weight:g}): each token weighed against what it would "
                         "say without the text shown.")
        if reader.get("abstain_by") == "head":
            sentence += (" It declines where an answerability head on its hidden state, fitted on the same facts' train "
                         "questions shown with and without their answer, finds the text silent.")
        if "raft" in ((results.get("gate") or {}).get("arms") or {}):
            sentence += (" It declines where the decline gate, fitted on development questions, scores its answer "
                         "as unlikely to be answerable from the text shown.")
    declined = [f"{pct(raft[s]['abstention_rate' if s == 'heldout' else 'accuracy'])} of {what}"
                for s, what in (("unanswerable", "unanswerable questions"), ("heldout", "answerable held-out ones"))
                if raft.get(s)]
    if declined:
        sentence += f" It abstained on {' and on '.join(declined)}."
    if reader.get("silent_abstained") is not None:
        sentence += (f" Shown text that does not name the answer to a training question, its own generation declined "
                     f"{pct(reader['silent_abstained'])} of the time")
        seen = (raft.get("seen") or {}).get("abstention_rate")
        if seen is None:
            sentence += "."
        elif reader["silent_abstained"] < DISCERNS:
            sentence += f" (shown the retrieved text, {pct(seen)}): it has not learnt to decline."
        elif reader["silent_abstained"] - seen < DISCERNS:
            sentence += (f"; shown the retrieved text for the same questions, {pct(seen)}: it barely tells a silent "
                         "passage from an answering one, so its declines say little about what the documents hold.")
        else:
            sentence += f", against {pct(seen)} when shown the retrieved text for the same questions."
    return sentence.strip()


def _held(results: dict, arm: str) -> dict | None:
    return results["arms"].get(arm, {}).get("heldout")


def _finding_rag_vs_lora(results: dict) -> list[str]:
    if not (_held(results, "rag") and _held(results, "lora")):
        return []
    out = [_compare(results, "rag", "lora")]
    if _separation(results, "rag", "lora") < 0:
        out.append("Fine-tuning recalled held-out facts better than retrieval in this run, contrary to the claim that "
                   "retrieval supplies the facts.")
    return out


def _finding_lora_rag(results: dict) -> list[str]:
    return [_compare(results, "lora_rag", "lora")] if _held(results, "lora_rag") and _held(results, "lora") else []


def _finding_raft(results: dict) -> list[str]:
    if not (_held(results, "raft") and _held(results, "rag")):
        return []
    return [_compare(results, "raft", "rag") + " " + _reader_sentence(results)]


def _finding_style(results: dict) -> list[str]:
    arms = results["arms"]
    if "lora" not in arms or "base" not in arms:
        return []
    prompt = f" and {pct(arms['prompt']['style_adherence'])} when the style is asked for in the prompt." if "prompt" in arms else "."
    return [f"Fine-tuning taught the house style: {pct(arms['lora']['style_adherence'])} of the LoRA model's answers "
            f"follow it, against {pct(arms['base']['style_adherence'])} for the base model" + prompt]


def _finding_memorised(results: dict) -> list[str]:
    lora = results["arms"].get("lora", {})
    if not (lora.get("seen") and lora.get("heldout")):
        return []
    gap = lora["seen"]["accuracy"] - lora["heldout"]["accuracy"]
    return [f"The LoRA model answered {pct(lora['seen']['accuracy'])} of the questions it was trained on but "
            f"{pct(lora['heldout']['accuracy'])} of the same facts asked in new words"
            + (" — it memorised phrasings more than it learned facts." if gap > 0.1 else ".")]


def _finding_curve(results: dict) -> list[str]:
    curve = results.get("curves") or []
    return [_learning_curve_sentence(curve)] if len(curve) >= 2 else []


def _finding_reverse(results: dict) -> list[str]:
    arms = results["arms"]
    reverse = arms.get("lora", {}).get("reverse")
    if not reverse:
        return []
    rag = arms.get("rag", {}).get("reverse")
    return [f"Asked in the reverse direction, the LoRA model was right {pct(reverse['accuracy'])} of the time"
            + (f", RAG {pct(rag['accuracy'])}." if rag else ".")]


def _finding_base(results: dict) -> list[str]:
    base = _held(results, "base")
    if not base:
        return []
    return [f"Without the documents the base model answered {pct(base['accuracy'])} of held-out questions "
            f"correctly and hallucinated {pct(base['hallucination_rate'])}: the facts are not in its weights."]


def _finding_abstention(results: dict) -> list[str]:
    unans = {arm: f["unanswerable"]["accuracy"] for arm, f in results["arms"].items() if f.get("unanswerable")}
    if not unans:
        return []
    if max(unans.values()) == min(unans.values()):
        return [f"On questions the documents cannot answer, every arm abstained {pct(min(unans.values()))} of the time."]
    best, worst = max(unans, key=unans.get), min(unans, key=unans.get)
    return [f"On questions the documents cannot answer, {label(best)} abstained most often "
            f"({pct(unans[best])}) and {label(worst)} least ({pct(unans[worst])})."]


def _finding_prompt_tokens(results: dict) -> list[str]:
    arms = results["arms"]
    if "rag" not in arms or "lora" not in arms:
        return []
    return [f"A RAG query cost {arms['rag']['prompt_tokens_per_query']:.0f} prompt tokens against "
            f"{arms['lora']['prompt_tokens_per_query']:.0f} for the fine-tuned model."]


def _finding_rag_errors(results: dict) -> list[str]:
    errors = results.get("retrieval", {}).get("rag_errors")
    if not (errors and sum(errors.values())):
        return []
    k = results["retrieval"]["k"]
    if "not_shown" not in errors:  # a run made before the split
        return [f"Of RAG's wrong held-out answers, {errors['retrieval_miss']} were retrieval misses (no chunk with the "
                f"evidence in the top {k}) and {errors['reader_error']} reader errors."]
    return [f"Of RAG's wrong held-out answers, {errors['retrieval_miss']} were not retrieved (no chunk with the "
            f"evidence in the top {k}), {errors['not_shown']} were retrieved but the text shown did not name the "
            f"answer, and {errors['misread']} were shown the answer and still got it wrong."]


def _finding_selective(results: dict) -> list[str]:
    """Which arm loses least by answering only when confident, and whether any confidence knows when it is right."""
    held = {arm: f["heldout"] for arm, f in (results.get("risk_coverage") or {}).items()
            if f.get("heldout") and f["heldout"].get("aurc") is not None}
    if len(held) < 2:
        return []
    best = min(held, key=lambda a: held[a]["aurc"])
    ranked = {a: f["confidence_auroc"] for a, f in held.items() if f.get("confidence_auroc") is not None}
    sentence = (f"Answering only when confident (held-out with the unanswerable questions, ranked by each arm's own "
                f"confidence), {label(best)} loses least: AURC {held[best]['aurc']:.3f}, accuracy "
                f"{pct(held[best].get('selective_accuracy'))} on its most confident half.")
    if ranked:
        top = max(ranked, key=ranked.get)
        sentence += (f" The confidence that best ranks right answers above wrong ones is {label(top)}'s "
                     f"(AUROC {ranked[top]:.2f}; 0.5 is chance).")
    return [sentence]


def _finding_unit_choice(results: dict) -> list[str]:
    """How much of what retrieval found the reader is shown, and the best other way of choosing it on development
    questions (retrieval.unit_choices): measured, never used to choose."""
    choices = results.get("retrieval", {}).get("unit_choices") or {}
    used = next((name for name, v in choices.items() if v["used"]), None)
    if used is None or choices[used].get("heldout") is None:
        return []
    whole = choices.get("whole chunks", {})
    sentence = (f"The text the retrieving arms were shown ({used}, {choices[used]['words']:.0f} words) named the answer "
                f"for {pct(choices[used]['heldout'])} of held-out questions; the top-{results['retrieval']['k']} chunks "
                f"whole held it for {pct(whole.get('heldout'))} ({whole.get('words', 0):.0f} words).")
    others = {n: v for n, v in choices.items() if n not in (used, "whole chunks") and v.get("development") is not None}
    if others and choices[used].get("development") is not None:
        name, best = max(others.items(), key=lambda item: item[1]["development"])
        sentence += (f" On development questions it named it for {pct(choices[used]['development'])}; the best other "
                     f"choice of units, {name} ({best['words']:.0f} words), for {pct(best['development'])}.")
    return [sentence]


def _finding_verdict(results: dict) -> list[str]:
    arms = results["arms"]
    if not (_held(results, "rag") and _held(results, "lora") and "base" in arms):
        return []
    rag_vs_lora = _separation(results, "rag", "lora")
    style_gain = _side(results, "lora.style_adherence > base.style_adherence") > 0
    if style_gain and rag_vs_lora > 0:
        return ["Verdict: this run supports the claim that fine-tuning teaches style and format while retrieval "
                "supplies the facts."]
    # The RAFT reader is retrieval with a reader taught to read on other facts: it never trained on a fact it is asked.
    if style_gain and rag_vs_lora == 0 and _held(results, "raft") and _separation(results, "raft", "lora") > 0:
        return ["Verdict: this run supports the claim that fine-tuning teaches style and format while retrieval "
                "supplies the facts when the reader is taught to read: the RAFT reader (retrieval, trained to read on "
                "other facts) clearly beat fine-tuning on the facts themselves, while plain RAG with the untrained "
                "reader could not be told apart from it."]
    if style_gain and rag_vs_lora == 0:
        corpus = results["corpus"]
        more = ("a larger probe (experiments/full.yaml) narrows the intervals"
                if corpus["facts"] < corpus.get("facts_in_corpus", corpus["facts"])
                else "only more facts or probe questions would narrow the intervals")
        return ["Verdict: fine-tuning taught the style, but this run cannot separate retrieval from fine-tuning on "
                f"facts; {more}."]
    parts = [] if style_gain else ["fine-tuning did not raise style adherence"]
    parts += [] if rag_vs_lora > 0 else ["retrieval did not beat fine-tuning on held-out facts"]
    return ["Verdict: this run does not support the claim: " + " and ".join(parts) + "."]


def _finding_update(results: dict) -> list[str]:
    update = results.get("update")
    if not update:
        return []
    arms, seconds = update["arms"], update["seconds"]
    out = [f"After {update['facts_changed']} facts changed, "
           + ", ".join(f"{label(a)} gave the current answer {pct(f['current'])} and the stale one {pct(f['stale'])} "
                       f"of the time ({f['action']})" for a, f in arms.items() if a != "base") + "."]
    again = update.get("retrained") or {}
    if "lora" in again and "lora" in arms:
        out.append(f"Retraining the adapter on the new version took {seconds['retrain']:.0f} s and moved the LoRA model "
                   f"from {pct(arms['lora']['current'])} to {pct(again['lora']['current'])} current answers "
                   f"(stale {pct(arms['lora']['stale'])} to {pct(again['lora']['stale'])}); re-indexing took "
                   f"{seconds['reindex']:.1f} s.")
    return out


# Each rule reads results.json and returns its sentences, or none when the arms it needs were not run.
FINDINGS = [_finding_rag_vs_lora, _finding_lora_rag, _finding_raft, _finding_style, _finding_memorised, _finding_curve,
            _finding_reverse, _finding_base, _finding_abstention, _finding_prompt_tokens, _finding_rag_errors,
            _finding_unit_choice, _finding_selective, _finding_gate,
            _finding_update, _finding_verdict]


def update_rows(results: dict) -> list[dict]:
    """The knowledge-update table: one row per arm after the switch, then the retrained adapter arms."""
    update = results.get("update")
    if not update:
        return []
    rows = []
    for phase, arms in (("after the switch", update["arms"]), ("after retraining", update.get("retrained") or {})):
        for arm, f in arms.items():
            rows.append({"arm": label(arm), "when": phase, "update": f["action"],
                         "seconds": f"{f['update_seconds']:.3g}",
                         "right before": pct(f["before_right"]) if "before_right" in f else "",
                         "current": pct_ci(f, "current"), "stale": pct_ci(f, "stale"), "other": pct(f["other"])})
    return rows


def cell(value) -> str:
    """Document or ledger text in a markdown table cell: no line breaks, no column breaks."""
    return " ".join(str(value).split()).replace("|", "\\|")


def findings(results: dict) -> list[str]:
    """Sentences computed from the figures, rule by rule (FINDINGS)."""
    return [sentence for rule in FINDINGS for sentence in rule(results)]


def results_csv(results: dict) -> str:
    """One line per (arm, set) plus the arm-level figures, for spreadsheets."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    per_set = [m for m in METRICS if m.per_set]
    per_arm = [m for m in METRICS if not m.per_set]
    writer.writerow(["arm", "set", "n", *(c for m in per_set for c in (m.name, f"{m.column}_low", f"{m.column}_high")),
                     *(m.name for m in per_arm)])
    for arm, f in results["arms"].items():
        for set_name, s in f.items():
            if isinstance(s, dict):
                writer.writerow([arm, set_name, s["n"],
                                 *(v for m in per_set for v in (s.get(m.name), *(s.get(f"{m.name}_ci") or [None, None]))),
                                 *(f.get(m.name) for m in per_arm)])
    return buffer.getvalue()


def markdown_table(results: dict) -> str:
    rows = comparison_rows(results)
    return tabulate([list(r.values()) for r in rows], headers=list(rows[0].keys()) if rows else [], tablefmt="github")


def _environment(autoescape: bool) -> Environment:
    # autoescape is a plain bool: select_autoescape() goes by file extension and would miss "report.html.j2".
    return Environment(loader=PackageLoader("ragvsft.presentation", "templates"), autoescape=autoescape,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def cost_markdown(table: dict) -> str:
    """The cost table (see cost.py) as Markdown, shared by report.md and `ragvsft cost`."""
    from ..cost import break_even_sentence

    rows = [[label(arm), f"{c['prompt_tokens_per_query']:.0f}", f"{c['generated_tokens_per_query']:.0f}",
             f"{1000 * c['cost_per_query']:.4f}", f"{c['fixed_per_month']:.2f}", f"{c['monthly']:.2f}"]
            for arm, c in table["arms"].items()]
    text = tabulate(rows, headers=["arm", "prompt tokens", "generated tokens", "USD per 1,000 queries",
                                   "fixed USD per month", "USD per month"], tablefmt="github")
    return text + "\n\n" + break_even_sentence(table)


def render_markdown(results: dict) -> str:
    from ..cost import cost_table

    costs = cost_table(results)
    return _environment(False).get_template("report.md.j2").render(
        r=results, table=markdown_table(results), findings=findings(results), literature=LITERATURE,
        arm_labels=ARM_LABELS, pct=pct, pct_ci=pct_ci, costs=costs, cost_table=cost_markdown(costs),
        claims=claims_of(results), updates=update_rows(results), context=context_rows(results), selective=selective_rows(results),
        gate=gate_rows(results),
        cell=cell)


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """results.json and predictions.jsonl of a finished run, with a clear error when the folder is not one."""
    run_dir = Path(run_dir)
    require_complete_run(run_dir)
    results_path = run_dir / "results.json"
    results = read_json(results_path, "run `ragvsft run` with its config again to recompute it")
    if not isinstance(results, dict) or not isinstance(results.get("arms"), dict):
        raise InputError([f"{results_path}:1: not the results of a ragvsft run (no \"arms\" mapping)"])
    predictions_path = run_dir / "predictions.jsonl"
    return results, read_jsonl(predictions_path) if predictions_path.is_file() else []
