"""What a run measures, declared once: the question sets and every figure of results.json's `arms`, with its label,
direction, interval and where it applies. The tables, the CSV, the plots, the claims ledger and `compare` loop over
these declarations instead of spelling the names (lm-evaluation-harness's metric registry is the model).

    from ragvsft.metrics import METRICS, SETS
    [m.name for m in METRICS if m.per_set]   # accuracy, hallucination_rate, abstention_rate, context_recall, ...
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuestionSet:
    name: str  # as in config probe.sets and results.json arms.<arm>.<set>
    label: str  # in sentences and tables
    long: str  # where the set is named alone (the context table, the explorer)
    answerable: bool  # False: abstaining is the right answer, so `accuracy` there is the share abstained
    compared: bool  # a column of the cross-run comparison (compare.py)


SETS = (
    QuestionSet("heldout", "held-out", "held-out", True, True),
    QuestionSet("seen", "seen", "seen in training", True, True),
    QuestionSet("unanswerable", "unanswerable", "unanswerable", False, True),
    QuestionSet("reverse", "reverse", "reverse", True, False),
)
SET_NAMES = tuple(s.name for s in SETS)
SET = {s.name: s for s in SETS}


@dataclass(frozen=True)
class Metric:
    name: str  # the key in results.json (its interval: `<name>_ci`)
    label: str  # a table column's words
    higher_is_better: bool
    interval: bool  # results.json holds a 95% bootstrap interval beside it
    unit: str  # "share", "tokens" or "seconds": how a figure is written
    per_set: bool  # arms.<arm>.<set>.<name>; False: arms.<arm>.<name>, over all the arm's answers
    csv: str = ""  # the CSV column's name where it differs from `name`
    verdict: bool = False  # a share of the verdicts correct / hallucinated / abstained (score.set_figures)

    @property
    def column(self) -> str:
        return self.csv or self.name


METRICS = (
    Metric("accuracy", "accuracy", True, True, "share", True, verdict=True),
    Metric("hallucination_rate", "hallucination", False, True, "share", True, csv="hallucination", verdict=True),
    Metric("abstention_rate", "abstained", False, True, "share", True, csv="abstention", verdict=True),
    Metric("context_recall", "context recall", True, True, "share", True),
    Metric("context_utilisation", "context utilisation", True, True, "share", True),
    # Selective answering (score.risk_coverage): the set's questions with the unanswerable ones, ranked by confidence.
    Metric("aurc", "AURC", False, False, "share", True),
    Metric("selective_accuracy", "accuracy, most confident half", True, False, "share", True),
    Metric("style_adherence", "house style", True, True, "share", False),
    Metric("prompt_tokens_per_query", "prompt tokens", False, False, "tokens", False),
    Metric("generated_tokens_per_query", "generated tokens", False, False, "tokens", False),
    Metric("seconds_per_query", "s/query", False, False, "seconds", False),
)
METRIC = {m.name: m for m in METRICS}
# The knowledge-update experiment's shares per arm (update.py): the current answer, the stale one, anything else.
UPDATE_SHARES = ("current", "stale", "other")
SHARES = tuple(m.name for m in METRICS if m.unit == "share") + UPDATE_SHARES


def column_label(metric: str, set_name: str | None = None) -> str:
    """A table column's words: "held-out accuracy", "unanswerable: abstained" (accuracy there is the share abstained)."""
    m = METRIC[metric]
    if set_name is None:
        return m.label
    s = SET[set_name]
    if m.name == "abstention_rate" or (m.name == "accuracy" and not s.answerable):
        return f"{s.label}: abstained"
    return f"{s.label} {m.label}"


# The columns of the run's comparison table (report.md, report.html), in order: (metric, set or None for the arm).
TABLE = (("accuracy", "heldout"), ("hallucination_rate", "heldout"), ("accuracy", "seen"), ("accuracy", "reverse"),
         ("abstention_rate", "heldout"), ("accuracy", "unanswerable"), ("style_adherence", None),
         ("prompt_tokens_per_query", None), ("generated_tokens_per_query", None), ("seconds_per_query", None))


def plotted(set_name: str) -> tuple[str, ...]:
    """The verdict shares plotted for a set: on unanswerable questions accuracy is the share abstained, one bar."""
    names = tuple(m.name for m in METRICS if m.verdict)
    return tuple(n for n in names if n != "accuracy") if not SET[set_name].answerable else names
