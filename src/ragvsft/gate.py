"""Declines for the retrieving arms, calibrated on development questions: a gate read from two measured signals.

A reader that copies from the text it was shown names words and numbers that the text holds; one that invents an
answer (the documents are silent, or it misread) names some that it does not. `grounding` scores an answer by that:
0 when it names a number that neither the text shown nor the question holds, else the share of its content words
(not the house-style markers, stop words or the question's own words) that the text shown holds. `support` is how
close the text shown is to the question (the cosine under the run's embedder, the retriever's own measure), each
unit's heading path left out: an unanswerable question about a neighbouring topic retrieves text that is near it but
not about it, and is often a near miss, an attribute the documents never give of an entity they do name ("the list
price of a Tern T3", shown "Robot weight: 86 kg" under the Tern T3's heading), which the heading would make look
near. `retrieval` is the
cosine of the question with the best retrieved chunk, and `margin` how far the best sentence or row of the retrieved
chunks stands above the runner-up: a question the documents answer tends to find one unit that fits it clearly.
`rank` is the retrieval rank of the chunk that holds that best unit (0: the first chunk): where the best-fitting
sentence sits in a lower-ranked chunk, chunk and sentence disagree about what the question is about.

The gate reads the signals in `gate.signals` through a logistic regression fitted, per arm and cross-fitted fold, on
development questions only to tell answerable from unanswerable ones (`fit`); an arm in `gate.arms` gives the
house-style abstention where that score is below a threshold. The threshold is the largest at which the arm declines
at most `gate.max_declined` of the answerable development questions (its own abstentions included), which makes it
decline as many unanswerable development questions as that allows (`choose_threshold`). Development questions of fold
i: the probe question of facts the run does not score, the unanswerable questions it does not ask and the silenced
questions (a fact's probe question asked with its answer's chunks taken out of retrieval, of facts outside fold i;
all generated for the gated arms only, `development.jsonl`), and the held-out and unanswerable questions of the other
folds. A question's own fold never sets its threshold.

A gate declines only where its pool shows it can: at least `gate.min_questions` answerable and as many unanswerable
development questions, and a cross-validated AUROC of its score there (fitted on four fifths of the pool, scored on
the fifth left out, `cross_validated_auroc`) of at least `gate.min_auroc`. Otherwise the fold's threshold is 0, so the
arm declines only where it abstains itself, and results.json says why: on a second corpus whose run left 7
unanswerable development questions per fold, the gate fitted there ranked the scored questions worse than chance
(AUROC 0.43) and declined half of the answerable train questions asked back.

Run it: `gate.arms` and `gate.signals` in the config; results.json `gate` records per fold the fitted weights, what
they were fitted on and the development figures at each share of answerable questions declined.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .index import chunk_units, unit_body
from .score import ABSTAINED, CORRECT, normalize, verdict

# The development table's rows: the share of answerable development questions a threshold may decline (the chosen
# one, gate.max_declined, is always among them).
SHARES = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
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


def _logistic():
    """The gate's model: its signals standardised, then a logistic regression (`fit` and `cross_validated_auroc`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def fit(rows: list[dict], signals: list[str]) -> dict | None:
    """The logistic regression that tells the rows' answerable questions from their unanswerable ones by `signals`
    (standardised first), as JSON-ready weights; None when the rows hold only one kind (nothing to tell apart)."""
    labels = [r["gold"] is not None for r in rows]
    if len(set(labels)) < 2:
        return None
    scaler, model = _logistic().fit(np.array([[r[s] for s in signals] for r in rows], dtype=float), labels)
    return {"signals": list(signals), "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
            "coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}


CV_FOLDS = 5  # parts of the pool for the cross-validated AUROC


def cross_validated_auroc(rows: list[dict], signals: list[str], seed: int) -> float | None:
    """How well a gate fitted on part of `rows` ranks the rest: each row scored by the logistic regression fitted
    without its part (stratified, CV_FOLDS parts, shuffled with `seed`), the AUROC of those scores for answerable
    against unanswerable. None when either kind has fewer rows than parts."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.array([r["gold"] is not None for r in rows])
    if min(labels.sum(), (~labels).sum()) < CV_FOLDS:
        return None
    features = np.array([[r[s] for s in signals] for r in rows], dtype=float)
    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed)
    scores = cross_val_predict(_logistic(), features, labels, cv=folds, method="predict_proba")[:, 1]
    return round(float(roc_auc_score(labels, scores)), 4)


def why_not(pool: list[dict], auroc: float | None, min_questions: int, min_auroc: float) -> str | None:
    """Why a gate may not decline on this pool (too few questions of a kind, or a ranking no better than
    `min_auroc`), or None when it may."""
    answerable = sum(r["gold"] is not None for r in pool)
    unanswerable = len(pool) - answerable
    if min(answerable, unanswerable) < min_questions:
        return (f"{answerable} answerable and {unanswerable} unanswerable development questions: fewer than "
                f"gate.min_questions ({min_questions}) of a kind")
    if min_auroc > 0 and (auroc is None or auroc < min_auroc):
        return f"cross-validated AUROC {auroc} on its development questions, below gate.min_auroc ({min_auroc})"
    return None


def score(row: dict, model: dict | None) -> float:
    """The gate's score of one prepared row: P(answerable) under `model`; without one, the grounding alone (what the
    gate read before `support`, and what a run made then recorded its thresholds for)."""
    if model is None:
        return row["grounding"]
    z = (np.array([row[s] for s in model["signals"]]) - model["mean"]) / model["scale"]
    return float(1 / (1 + np.exp(-(z @ np.array(model["coef"]) + model["intercept"]))))


def declined(value: float, own: str, threshold: float) -> bool:
    """Whether a gated answer is declined: its arm abstained itself (`own`, its verdict without the gate), or its
    gate score is below the threshold."""
    return own == ABSTAINED or value < threshold


def choose_threshold(development: list[dict], model: dict | None, max_declined: float,
                     abstain_phrases: list[str]) -> dict:
    """The largest threshold on the rows' scores at which at most `max_declined` of the answerable development rows
    are declined (the arm abstained itself, or its score is below the threshold), with the development figures at
    each share of SHARES; threshold 0 (never declines) when the rows hold no answerable or no unanswerable question."""
    # Each generated answer is judged once: (score, the arm abstained itself, right), then every threshold reads it.
    judged = [(score(r, model), verdict(r["ungated_answer"], r["gold"], abstain_phrases), r["gold"] is not None)
              for r in development]
    answerable = [(g, v) for g, v, has_gold in judged if has_gold]
    silent = [(g, v) for g, v, has_gold in judged if not has_gold]

    def figures(t: float) -> dict:
        return {"threshold": t, "answerable_declined": _share([declined(g, v, t) for g, v in answerable]),
                "unanswerable_declined": _share([declined(g, v, t) for g, v in silent]),
                "accuracy": _share([not declined(g, v, t) and v == CORRECT for g, v in answerable])}

    candidates = [figures(t) for t in sorted({0.0} | {g for g, _, _ in judged})] if answerable and silent else []
    table = []
    for share in sorted(set(SHARES) | {max_declined}):
        point = max((p for p in candidates if p["answerable_declined"] <= share), key=lambda p: p["threshold"],
                    default=figures(0.0))
        table.append({"declined_at_most": share} | point)
    chosen = next(p["threshold"] for p in table if p["declined_at_most"] == max_declined)
    return {"threshold": chosen, "answerable": len(answerable), "unanswerable": len(silent), "table": table,
            "ungated": figures(0.0)}  # the arm's own abstentions only: what a gate that declines nothing leaves


def best_thresholds(judged: list[tuple[int, float, str, bool]], folds: int, max_declined: float) -> tuple[int, int, int]:
    """The most unanswerable questions that one threshold per fold declines while at most `max_declined` of the
    answerable ones are declined over all folds, then the most answerable ones answered right: (answerable declined,
    unanswerable declined, answered right), counts. `judged` holds per question (its fold, gate score, its verdict
    without the gate, answerable or not); a question is declined where its arm abstained itself or its score is below
    its fold's threshold. A knapsack over the folds: benchmark.py's ceiling for thresholds picked on the very
    questions they are measured on, which no run may do."""
    allowed = max_declined * sum(answerable for *_, answerable in judged) + 1e-9
    best = {0: (0, 0)}  # answerable declined so far -> (unanswerable declined, answered right), the most of both
    for fold in range(folds):
        mine = [(g, v, a) for f, g, v, a in judged if f == fold]
        options = set()
        for t in {0.0, math.inf} | {g for g, _, _ in mine}:
            out = [(declined(g, v, t), v, a) for g, v, a in mine]
            options.add((sum(d for d, _, a in out if a), sum(d for d, _, a in out if not a),
                         sum(not d and v == CORRECT for d, v, a in out if a)))
        reached: dict[int, tuple[int, int]] = {}
        for spent, (gained, right) in best.items():
            for a, u, c in options:
                if spent + a <= allowed:
                    reached[spent + a] = max(reached.get(spent + a, (-1, -1)), (gained + u, right + c))
        best = reached
    spent, (gained, right) = max(best.items(), key=lambda item: (item[1], -item[0]))
    return spent, gained, right


def _share(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 4) if flags else None


SIGNALS = ("grounding", "support", "retrieval", "margin", "rank")  # the row fields `prepare` fills, each a gate reads
FROM_CHUNKS = ("retrieval", "margin", "rank")  # the signals read from the retrieved chunks' units (embedding them all)


def prepare(rows: list[dict], arms: list[str], markers: list[str], encoder, chunks: dict[str, str] | None = None,
            headed: bool = True, signals=SIGNALS) -> None:
    """Keep each gated row's generated answer (`ungated_answer`, once) and read its signals: its grounding in the
    text it was shown, that text's support (cosine with the question under `encoder`, heading paths left out where
    units are `headed`; 0 where none was shown), and,
    where `signals` asks for them, the retrieval, margin and rank signals from the retrieved chunks' texts (`chunks`:
    id -> text; 0 where nothing was retrieved or `chunks` is not given; absent where not asked for: they embed every
    unit of those chunks)."""
    gated = [r for r in rows if r["arm"] in arms]
    from_chunks = bool(set(FROM_CHUNKS) & set(signals))
    for row in gated:
        row.setdefault("ungated_answer", row["answer"])
        row["grounding"] = grounding(row["ungated_answer"], [t for _, t in row["shown"]], row["question"], markers)
        row["support"] = 0.0
        if from_chunks:
            row.update(dict.fromkeys(FROM_CHUNKS, 0.0))
    shown = [r for r in gated if r["shown"]]
    if shown:
        # a unit's own words: its heading path names only what it is about
        bodies = [" ".join(unit_body(t) if headed else t for _, t in r["shown"]) for r in shown]
        cosines = (encoder.encode([r["question"] for r in shown]) * encoder.encode(bodies)).sum(axis=1)
        for row, cosine in zip(shown, cosines):
            row["support"] = round(float(cosine), 4)
    found = [r for r in gated if chunks and r.get("retrieved")] if from_chunks else []
    if not found:
        return
    units = {cid: chunk_units(chunks[cid], headed) for r in found for cid in r["retrieved"]}
    texts = list(dict.fromkeys(t for cid, mine in units.items() for t in [chunks[cid], *mine]))
    vectors = dict(zip(texts, encoder.encode(texts)))  # each chunk and unit embedded once for all rows
    for row, query in zip(found, encoder.encode([r["question"] for r in found])):
        row["retrieval"] = round(float(vectors[chunks[row["retrieved"][0]]] @ query), 4)
        ranked = sorted(((float(vectors[u] @ query), rank) for rank, cid in enumerate(row["retrieved"])
                         for u in units[cid]), key=lambda pair: -pair[0])
        row["margin"] = round(ranked[0][0] - ranked[1][0], 4) if len(ranked) > 1 else 0.0
        row["rank"] = float(ranked[0][1]) if ranked else 0.0


def apply(rows: list[dict], gates: dict[str, list[dict]], fold_of: dict[str, int], abstain_template: str,
          abstain_phrases: list[str]) -> None:
    """The gated arms' answers: the house-style abstention where the score under the row's fold gate (its `model` and
    `threshold`, as `calibrate` chose them) declines it, else the generated answer (re-derived from `ungated_answer`
    every time, so a rerun never gates twice)."""
    for row in rows:
        if row["arm"] not in gates:
            continue
        fold = gates[row["arm"]][fold_of.get(row["qid"], 0)]
        value = score(row, fold.get("model"))
        row["gate_score"] = round(value, 4)
        gated = value < fold["threshold"] and verdict(row["ungated_answer"], row["gold"], abstain_phrases) != ABSTAINED
        row["answer"] = abstain_template if gated else row["ungated_answer"]
        row["gated"] = bool(gated)


def calibrate(predictions: list[dict], development: list[dict], arms: list[str], folds: int, fold_of: dict[str, int],
              max_declined: float, abstain_phrases: list[str], signals: list[str], min_questions: int = 0,
              min_auroc: float = 0.0, seed: int = 0) -> dict:
    """Per gated arm and fold, the gate fitted and thresholded on that fold's development rows, or threshold 0 with
    the reason (`why_not`) where they do not show that it can tell the two kinds apart (module docstring)."""
    figures = {}
    for arm in arms:
        chosen = []
        for fold in range(folds):
            # Development rows of a scored fact (silenced questions) belong to its fold; the others to none.
            mine = [r for r in development if r["arm"] == arm and fold_of.get(r["qid"]) != fold]
            pool = mine + [r for r in predictions if r["arm"] == arm and r["set"] in DEVELOPMENT_SETS
                           and fold_of.get(r["qid"], 0) != fold]
            model = fit(pool, signals)
            auroc = cross_validated_auroc(pool, signals, seed)
            held_back = why_not(pool, auroc, min_questions, min_auroc)
            picked = choose_threshold(pool, model, max_declined, abstain_phrases)
            chosen.append(picked | {"threshold": 0.0 if held_back else picked["threshold"], "model": model,
                                    "auroc_cv": auroc, "declines": held_back is None, "why_not": held_back,
                                    "from_development_questions": len(mine), "from_other_folds": len(pool) - len(mine)})
        figures[arm] = {"thresholds": [c["threshold"] for c in chosen], "folds": chosen}
    return figures
