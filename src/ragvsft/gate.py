"""Declines for the retrieving arms, calibrated on development questions: the answer–context agreement gate.

A reader that copies from the text it was shown names words and numbers that the text holds; one that invents an
answer (the documents are silent, or it misread) names some that it does not. `grounding` scores an answer by that:
0 when it names a number that neither the text shown nor the question holds, else the share of its content words
(not the house-style markers, stop words or the question's own words) that the text shown holds. An arm in
`gate.arms` gives the house-style abstention where its answer's grounding is below a threshold.

The threshold is chosen per arm, and per cross-fitted fold, on development questions only (`choose_threshold`): the
largest of THRESHOLDS at which the arm declines at most `gate.max_declined` of the answerable development questions
(its own abstentions included), which makes it decline as many unanswerable development questions as that allows.
Development questions of fold i: the probe question of facts the run does not score and the unanswerable questions it
does not ask (generated for the gated arms only, `development.jsonl`), and the held-out and unanswerable questions
of the other folds. A question's own fold never sets its threshold.

Run it: `gate.arms` in the config (default: every retrieving arm); results.json `gate` records what each threshold was
chosen on and the development figures at every threshold.
"""

from __future__ import annotations

import re

import numpy as np

from .score import ABSTAINED, normalize, verdict

# Decline when grounding < threshold; 0 never declines, 0.01 declines only answers naming a number the text lacks.
THRESHOLDS = (0.0, 0.01, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEVELOPMENT_SETS = ("heldout", "unanswerable")  # the probe's style: what a threshold is calibrated on
# Function words carry nothing an answer could have invented (English; a word of the question is never counted).
STOP_WORDS = frozenset(
    "a about an and are as at be been but by can could do does for from had has have he her his how i if in into is "
    "it its me my no not of on or our she so than that the their them then there these they this those to us was we "
    "were what when where which who whom why will with would you your yes per each any all".split())


def _body(answer: str, markers: list[str]) -> str:
    for marker in markers:
        answer = re.sub(marker, " ", answer, flags=re.MULTILINE)
    return answer


def grounding(answer: str, shown: list[str], question: str, markers: list[str]) -> float:
    """How much of the answer the text shown holds: 0.0 when it names a number absent from both the text and the
    question, else the share of its content words found in the text (1.0 when it has none)."""
    words = normalize(_body(answer, markers)).split()
    text = set(normalize(" ".join(shown)).split())
    asked = set(normalize(question).split())
    if any(re.search(r"\d", w) and w not in text and w not in asked for w in words):
        return 0.0
    content = [w for w in words if w not in STOP_WORDS and w not in asked]
    return round(float(np.mean([w in text for w in content])), 4) if content else 1.0


def choose_threshold(development: list[dict], max_declined: float, abstain_phrases: list[str]) -> dict:
    """The largest threshold at which at most `max_declined` of the answerable development rows are declined (the arm
    abstained itself, or its answer's grounding is below the threshold), with the development figures at every
    threshold; threshold 0 (never declines) when the rows hold no answerable or no unanswerable question."""
    # Each generated answer is judged once: (grounding, the arm abstained itself, right), then every threshold reads it.
    judged = [(r["grounding"], verdict(r["ungated_answer"], r["gold"], abstain_phrases), r["gold"] is not None)
              for r in development]
    answerable = [(g, v) for g, v, has_gold in judged if has_gold]
    silent = [(g, v) for g, v, has_gold in judged if not has_gold]
    declined = lambda g, v, t: v == ABSTAINED or g < t  # noqa: E731
    table = []
    for t in THRESHOLDS:
        table.append({"threshold": t,
                      "answerable_declined": _share([declined(g, v, t) for g, v in answerable]),
                      "unanswerable_declined": _share([declined(g, v, t) for g, v in silent]),
                      "accuracy": _share([not declined(g, v, t) and v == "correct" for g, v in answerable])})
    usable = [p["threshold"] for p in table if answerable and silent and p["answerable_declined"] <= max_declined]
    return {"threshold": max(usable, default=0.0), "answerable": len(answerable), "unanswerable": len(silent),
            "table": table}


def _share(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 4) if flags else None


def prepare(rows: list[dict], arms: list[str], markers: list[str]) -> None:
    """Keep each gated row's generated answer (`ungated_answer`, once) and its grounding in the text it was shown."""
    for row in (r for r in rows if r["arm"] in arms):
        row.setdefault("ungated_answer", row["answer"])
        row["grounding"] = grounding(row["ungated_answer"], [t for _, t in row["shown"]], row["question"], markers)


def apply(rows: list[dict], thresholds: dict[str, list[float]], fold_of: dict[str, int], abstain_template: str,
          abstain_phrases: list[str]) -> None:
    """The gated arms' answers: the house-style abstention where the row's fold threshold declines it, else the
    generated answer (re-derived from `ungated_answer` every time, so a rerun never gates twice)."""
    for row in rows:
        if row["arm"] not in thresholds:
            continue
        threshold = thresholds[row["arm"]][fold_of.get(row["qid"], 0)]
        gated = row["grounding"] < threshold and verdict(row["ungated_answer"], row["gold"], abstain_phrases) != ABSTAINED
        row["answer"] = abstain_template if gated else row["ungated_answer"]
        row["gated"] = bool(gated)


def calibrate(predictions: list[dict], development: list[dict], arms: list[str], folds: int, fold_of: dict[str, int],
              max_declined: float, abstain_phrases: list[str]) -> dict:
    """Per gated arm and fold, the threshold chosen on that fold's development rows (see the module docstring)."""
    figures = {}
    for arm in arms:
        chosen = []
        for fold in range(folds):
            pool = [r for r in development if r["arm"] == arm]
            pool += [r for r in predictions if r["arm"] == arm and r["set"] in DEVELOPMENT_SETS
                     and fold_of.get(r["qid"], 0) != fold]
            chosen.append(choose_threshold(pool, max_declined, abstain_phrases)
                          | {"from_development_questions": sum(r["arm"] == arm for r in development),
                             "from_other_folds": len(pool) - sum(r["arm"] == arm for r in development)})
        figures[arm] = {"thresholds": [c["threshold"] for c in chosen], "folds": chosen}
    return figures
