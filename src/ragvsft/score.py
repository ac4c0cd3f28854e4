"""Scoring: answer normalisation, verdicts (correct / hallucinated / abstained), house-style checks, metrics with
bootstrap confidence intervals.

A metric is a small named unit with a direction, so the table generator knows which way is better.
Normalisation: Unicode NFKC, lowercase, `%` read as "percent", a unit glued to its number split off ("14kg" is
"14 kg"), thousands separators dropped ("1,140" is "1140"), other punctuation and symbols replaced by spaces except `.`,
`,` and `:` between digits (so "0.35" and "10:00" stay one token and "14" never matches "140" or "14.5"), number words
from two to ninety-nine read as digits ("three days" is "3 days").

Gold matching: an answer is correct when the fact's answer or an alias occurs in it as whole words. An alias that is a
bare number ("12" for "12 months") counts only where the number is not followed by a different unit: "12 months",
"12." and "12 mo" match, "12 hours" does not. The units a fact expects are the words that follow its number in its
answer and its other aliases. An answer that declines ("I can't find that...") is abstained even when it goes on to
guess; a guess that names the gold answer is flagged `hedged` in the predictions.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import regex
from scipy.stats import bootstrap, mannwhitneyu

from .catalogue import COMPARISONS

CORRECT, HALLUCINATED, ABSTAINED = "correct", "hallucinated", "abstained"

# Phrases a model uses when it declines to answer; the corpus's own abstain template is added per corpus.
ABSTENTION_PHRASES = (
    "i can't find", "i cannot find", "i could not find", "i couldn't find", "i don't know", "i do not know",
    "not in our documents", "not in the documents", "no information", "not mentioned", "i'm not sure",
    "i am not sure", "i don't have", "i do not have", "unable to find", "not able to find", "cannot answer",
    "can't answer", "not available in", "no record", "doesn't say", "does not say", "not specified",
    "unable to provide", "cannot provide", "can't provide", "not able to provide", "don't have access",
    "do not have access", "not provided in", "no mention",
)

# Unit words, in groups of synonyms: a bare number followed by a unit outside the fact's expected groups is not a match.
UNIT_GROUPS = (
    ("s", "sec", "secs", "second", "seconds"), ("min", "mins", "minute", "minutes"),
    ("h", "hr", "hrs", "hour", "hours"), ("day", "days"), ("week", "weeks"), ("month", "months"), ("year", "years"),
    ("mg",), ("g", "gram", "grams"), ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"),
    ("t", "tonne", "tonnes", "ton", "tons"), ("mm", "millimetre", "millimetres", "millimeter", "millimeters"),
    ("cm", "centimetre", "centimetres", "centimeter", "centimeters"), ("m", "metre", "metres", "meter", "meters"),
    ("km", "kilometre", "kilometres", "kilometer", "kilometers"), ("euro", "euros", "eur"),
    ("dollar", "dollars", "usd"), ("pound", "pounds", "gbp"), ("percent", "per cent", "pct"),
    ("kb",), ("mb",), ("gb",), ("tb",), ("w", "watt", "watts"), ("kw",), ("kwp",), ("mw",), ("kwh",), ("mwh",),
    # "a" (ampere) is left out on purpose: "2 a day" is far more common in answers than "2 A".
    ("v", "volt", "volts"), ("amp", "amps", "ampere", "amperes"), ("mah",), ("c", "celsius", "degree", "degrees"),
    ("db", "decibel", "decibels"), ("hz",), ("khz",), ("ghz",),
)
_UNIT_GROUP = {word: i for i, group in enumerate(UNIT_GROUPS) for word in group}
_GLUED_UNIT = re.compile(r"(?<=\d)(" + "|".join(sorted((w for w in _UNIT_GROUP if " " not in w), key=len, reverse=True))
                         + r")\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER_PUNCT = re.compile(r"(?<=\d)[.,:](?=\d)")
_NON_WORD = re.compile(r"[^\w\u0001]+")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")
# Number words read as digits ("three calendar days" is "3 calendar days", "sixty-one" is "61"). Not "one": as a
# pronoun ("the one in Vellby") it would turn into a bare 1.
_UNITS = {w: n for n, w in enumerate("two three four five six seven eight nine".split(), start=2)}
_SMALL = _UNITS | {w: n for n, w in enumerate(
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split(), start=10)}
_TENS = {w: n for n, w in zip(range(20, 100, 10), "twenty thirty forty fifty sixty seventy eighty ninety".split())}


def _digits(words: list[str]) -> list[str]:
    """Number words up to ninety-nine as digits; a tens word takes the unit word after it ("sixty one" is 61)."""
    out: list[str] = []
    tens = False  # the previous word was a tens word, so a unit word after it adds to it
    for word in words:
        if tens and (word in _UNITS or word == "one"):
            out[-1] = str(int(out[-1]) + _UNITS.get(word, 1))
        else:
            value = _SMALL.get(word, _TENS.get(word))
            out.append(word if value is None else str(value))
        tens = word in _TENS
    return out


def normalize(text: str) -> str:
    """Lowercase, NFKC, units split from numbers, punctuation stripped except inside numbers, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower().replace("%", " percent ")
    text = _GLUED_UNIT.sub(r" \1", _THOUSANDS.sub("", text))
    # Protect number-internal punctuation with placeholders, strip the rest, then restore.
    text = _NUMBER_PUNCT.sub(lambda m: {".": "\u0001d", ",": "\u0001c", ":": "\u0001k"}[m.group()], text)
    text = _NON_WORD.sub(" ", text.replace("_", " "))
    text = text.replace("\u0001d", ".").replace("\u0001c", ",").replace("\u0001k", ":")
    return " ".join(_digits(text.split()))


def mentions(text: str, phrase: str) -> bool:
    """True when `phrase` occurs in `text` as whole words after normalisation."""
    needle = normalize(phrase)
    return bool(needle) and f" {needle} " in f" {normalize(text)} "


def mentions_any(text: str, phrases: list[str]) -> bool:
    return any(mentions(text, p) for p in phrases)


def _expected_units(gold: list[str]) -> set[int]:
    """Unit groups that follow a number in the gold entries that are more than a bare number."""
    groups = set()
    for entry in gold:
        words = normalize(entry).split()
        for i, word in enumerate(words[:-1]):
            if _NUMBER.fullmatch(word):
                groups |= {_UNIT_GROUP[w] for w in words[i + 1:i + 3] if w in _UNIT_GROUP}
                pair = " ".join(words[i + 1:i + 3])
                if pair in _UNIT_GROUP:
                    groups.add(_UNIT_GROUP[pair])
    return groups


def _bare_number_matches(words: list[str], number: str, expected: set[int]) -> bool:
    """`number` occurs in `words` and is not followed by a unit outside the expected ones."""
    for i, word in enumerate(words):
        if word != number:
            continue
        after = words[i + 1] if i + 1 < len(words) else None
        pair = " ".join(words[i + 1:i + 3])
        unit = _UNIT_GROUP.get(pair, _UNIT_GROUP.get(after))
        if unit is None or unit in expected:
            return True
    return False


def _range_forms(needle: str) -> list[str]:
    """A normalised gold range "x to y" between numbers also reads "between x and y" and "x until y"."""
    low, to, high = needle.partition(" to ")
    if not to or not _NUMBER.search(low) or not _NUMBER.search(high):
        return [needle]
    return [needle, f"between {low} and {high}", f"{low} until {high}", f"{low} till {high}"]


def matches_gold(text: str, gold: list[str]) -> bool:
    """True when the answer or an alias occurs in `text` as whole words (bare numbers only with a fitting unit; a
    range "x to y" also as "between x and y" or "x until y")."""
    words = normalize(text).split()
    padded = f" {' '.join(words)} "
    expected = None
    for entry in gold:
        needle = normalize(entry)
        if not needle:
            continue
        if _NUMBER.fullmatch(needle):
            expected = _expected_units(gold) if expected is None else expected
            if _bare_number_matches(words, needle, expected):
                return True
        elif any(f" {form} " in padded for form in _range_forms(needle)):
            return True
    return False


def verdict(answer: str, gold: list[str] | None, abstain_phrases: list[str]) -> str:
    """Verdict for one answer. `gold` is the answer plus its aliases, or None for an unanswerable question.

    A declared abstention wins over a guess that follows it: the model said it does not know."""
    if mentions_any(answer, abstain_phrases):
        return ABSTAINED
    if gold and matches_gold(answer, gold):
        return CORRECT
    return HALLUCINATED


def names_answer(texts: list[str], gold: list[str] | None, question: str = "") -> bool:
    """True when the texts shown to a reader name the gold answer; a gold answer that the question itself already
    names is not credited to the texts (the question's own words are excluded). The one rule for "answer shown":
    context recall, RAG's error split and the reader's training labels all read it."""
    return bool(gold) and not matches_gold(question, list(gold)) and matches_gold("\n".join(texts), list(gold))


def hedged(answer: str, gold: list[str] | None, abstain_phrases: list[str]) -> bool:
    """An abstention that still names the gold answer ("I can't find that... perhaps 58 euros")."""
    return bool(gold) and mentions_any(answer, abstain_phrases) and matches_gold(answer, gold)


MARKER_SECONDS = 0.25  # a marker that needs longer on one answer backtracks without end: it is refused, never waited on


def marker_matches(marker: str, text: str) -> bool:
    """One house-style marker against a text, under a time limit (the `regex` engine's timeout): a marker is user
    input, and a catastrophically backtracking one must not hang scoring. Raises TimeoutError."""
    return regex.search(marker, text, flags=regex.MULTILINE, timeout=MARKER_SECONDS) is not None


def follows_style(answer: str, markers: list[str]) -> bool:
    """True when every house-style marker regex matches the answer (stripped of surrounding whitespace); an answer
    on which a marker runs out of time does not follow the style."""
    text = answer.strip()
    try:
        return all(marker_matches(m, text) for m in markers)
    except TimeoutError:
        return False


@dataclass(frozen=True)
class Metric:
    """A rate per (arm, question set): the share of answers with `verdict`."""

    name: str
    verdict: str


SET_METRICS = (
    Metric("accuracy", CORRECT),
    Metric("hallucination_rate", HALLUCINATED),
    Metric("abstention_rate", ABSTAINED),
)


def cluster_of(row: dict) -> str:
    """The unit the bootstrap resamples: a question's fact (its questions are not independent), else the question."""
    return row.get("fact_id") or row.get("qid") or str(id(row))


def _clustered_ci(values: np.ndarray, clusters: list | None, seed: int, confidence: float, resamples: int) -> list[float]:
    """Percentile bootstrap interval (scipy.stats.bootstrap) of sum(values) / len(values) when whole clusters are
    resampled: the questions of one fact stay together, so the interval is not narrowed by asking a fact twice.
    Without clusters every value is its own cluster (the ordinary bootstrap of a mean)."""
    keys = list(range(len(values))) if clusters is None else clusters
    _, inverse = np.unique(np.asarray([str(k) for k in keys]), return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(float)
    if len(sums) < 2:
        mean = float(values.mean())
        return [round(mean, 4)] * 2

    def ratio(picked, axis=-1):
        picked = picked.astype(int)
        return sums[picked].sum(axis=axis) / counts[picked].sum(axis=axis)

    result = bootstrap((np.arange(len(sums), dtype=float),), ratio, vectorized=True, confidence_level=confidence,
                       n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return [round(float(low), 4), round(float(high), 4)]


def rate_with_ci(hits: list[bool], seed: int, confidence: float = 0.95, resamples: int = 2000,
                 clusters: list | None = None) -> tuple[float, list[float]]:
    """Share of True in `hits` and its percentile bootstrap confidence interval, resampling whole `clusters` (one
    key per hit, e.g. the fact asked about) where given."""
    values = np.asarray(hits, dtype=float)
    if len(values) == 0:
        return 0.0, [0.0, 0.0]
    mean = float(values.mean())
    if values.min() == values.max():  # degenerate sample: every resample has the same mean
        return mean, [mean, mean]
    return mean, _clustered_ci(values, clusters, seed, confidence, resamples)


def set_figures(verdicts: list[str], seed: int, unanswerable: bool = False, resamples: int = 2000,
                clusters: list | None = None) -> dict:
    """Accuracy, hallucination and abstention rates with 95% bootstrap intervals (resampled by `clusters`, one per
    verdict, where given) for one (arm, question set).

    On unanswerable questions the right behaviour is to abstain, so there `accuracy` is the share abstained.
    """
    figures: dict = {"n": len(verdicts)}
    for metric in SET_METRICS:
        wanted = ABSTAINED if unanswerable and metric.name == "accuracy" else metric.verdict
        value, ci = rate_with_ci([v == wanted for v in verdicts], seed, resamples=resamples, clusters=clusters)
        figures[metric.name] = round(value, 4)
        figures[f"{metric.name}_ci"] = ci
    return figures


def context_figures(rows: list[dict], seed: int, resamples: int = 2000) -> dict:
    """Context recall (share of questions whose shown text names the gold answer, `names_answer`) and context
    utilisation (share correct among those) for one retrieving arm's answerable set, with clustered intervals: the
    judge-free versions of what RAG evaluators call context recall and utilisation."""
    shown = [r for r in rows if r.get("answer_shown") is not None]
    if not shown:
        return {}
    recall, recall_ci = rate_with_ci([r["answer_shown"] for r in shown], seed, resamples=resamples,
                                     clusters=[cluster_of(r) for r in shown])
    named = [r for r in shown if r["answer_shown"]]
    use, use_ci = rate_with_ci([r["verdict"] == CORRECT for r in named], seed, resamples=resamples,
                               clusters=[cluster_of(r) for r in named])
    return {"context_recall": round(recall, 4), "context_recall_ci": recall_ci, "shown_n": len(named),
            "context_utilisation": round(use, 4) if named else None, "context_utilisation_ci": use_ci if named else None}


def arm_figures(rows: list[dict], seed: int, resamples: int = 2000, selective: dict | None = None) -> dict:
    """results.json's "arms": per arm and question set the three rates with intervals resampled by fact (for
    retrieving arms, context recall and utilisation; for answerable sets, AURC and selective accuracy from
    `selective`, risk_coverage_figures of the same rows, computed here when not given), then style adherence with its
    interval, prompt and generated tokens per query and seconds per query over all its answers."""
    selective = risk_coverage_figures(rows) if selective is None else selective
    arms: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        figures: dict = {}
        for set_name in dict.fromkeys(r["set"] for r in mine):
            asked = [r for r in mine if r["set"] == set_name]
            figures[set_name] = set_figures([r["verdict"] for r in asked], seed, set_name == "unanswerable", resamples,
                                            [cluster_of(r) for r in asked]) | context_figures(asked, seed, resamples)
            curve = selective.get(arm, {}).get(set_name)
            if curve:
                figures[set_name] |= {k: curve[k] for k in ("aurc", "selective_accuracy")}
        n = len(mine)
        style, style_ci = rate_with_ci([bool(r["style_ok"]) for r in mine], seed, resamples=resamples,
                                       clusters=[cluster_of(r) for r in mine])
        figures["style_adherence"] = round(style, 4)
        figures["style_adherence_ci"] = style_ci
        figures["prompt_tokens_per_query"] = round(sum(r["prompt_tokens"] for r in mine) / n, 1)
        figures["generated_tokens_per_query"] = round(sum(r["generated_tokens"] for r in mine) / n, 1)
        figures["seconds_per_query"] = round(sum(r["seconds"] for r in mine) / n, 4)
        arms[arm] = figures
    return arms


def rag_errors(rows: list[dict], gold_chunks: dict[str, set[str]], arm: str = "rag", set_name: str = "heldout") -> dict:
    """Wrong answers of a retrieving arm split by where the answer was lost: `retrieval_miss` (no gold chunk in the
    top k retrieved), `not_shown` (a gold chunk retrieved, but the text shown does not name the answer) and `misread`
    (the text shown names it, the answer is still wrong); `reader_error` = not_shown + misread."""
    wrong = [r for r in rows if r["arm"] == arm and r["set"] == set_name and r["verdict"] != CORRECT]
    miss = [r for r in wrong if not gold_chunks.get(r["fact_id"], set()) & set(r["retrieved"])]
    misread = sum(1 for r in wrong if r not in miss and r.get("answer_shown"))
    not_shown = len(wrong) - len(miss) - misread
    return {"retrieval_miss": len(miss), "reader_error": not_shown + misread, "not_shown": not_shown,
            "misread": misread}


def paired_difference(rows: list[dict], arm_a: str, arm_b: str, set_name: str, seed: int, resamples: int = 2000) -> dict | None:
    """Accuracy of arm_a minus arm_b on the same questions, with a paired 95% bootstrap interval that resamples whole
    facts (a fact's questions together): tighter and more honest than asking whether two separate intervals overlap.
    None when either arm did not answer the set."""
    a = {r["qid"]: r for r in rows if r["arm"] == arm_a and r["set"] == set_name}
    b = {r["qid"]: r["verdict"] == CORRECT for r in rows if r["arm"] == arm_b and r["set"] == set_name}
    shared = sorted(a.keys() & b.keys())
    if not shared:
        return None
    gaps = np.array([(a[q]["verdict"] == CORRECT) - b[q] for q in shared], dtype=float)
    difference = round(float(gaps.mean()), 4)
    if gaps.min() == gaps.max():  # every pair differs alike: every resample gives the same difference
        return {"n": len(shared), "difference": difference, "ci": [difference] * 2}
    ci = _clustered_ci(gaps, [cluster_of(a[q]) for q in shared], seed, 0.95, resamples)
    return {"n": len(shared), "difference": difference, "ci": ci}


def confidence_of(row: dict) -> float | None:
    """What an arm is confident by: its answerability head's probability where it declines by head (raft), else its
    answer's mean token log-probability (arms.Generation.logprob); None where neither was recorded."""
    return row["answerable"] if row.get("answerable") is not None else row.get("logprob")


def risk_coverage(rows: list[dict], arm: str, set_name: str) -> dict | None:
    """Selective answering for one arm: its answers to an answerable set together with the unanswerable questions
    (answering one of those is wrong), ranked by `confidence_of`, most confident first; the arm's own declines are
    never answered. `points` are (coverage, accuracy on the answered) as the threshold falls, one per answer: the
    share of all questions answered and the share of those answered correctly. `aurc` is the mean risk (1 -
    accuracy) over those points, the area under the risk-coverage curve over the coverage the arm reaches (Geifman &
    El-Yaniv 2017); `selective_accuracy` the accuracy on the most confident half of all questions (None where the arm
    answered fewer); `confidence_auroc` how well the confidence ranks a right answer above a wrong one (0.5: chance).
    None where the arm did not answer the set or a confidence is missing (answers stored before it was recorded)."""
    pool = [r for r in rows if r["arm"] == arm and r["set"] in (set_name, "unanswerable")]
    if not any(r["set"] == set_name for r in pool):
        return None
    answered = [r for r in pool if r["verdict"] != ABSTAINED]
    if any(confidence_of(r) is None for r in answered):
        return None
    answered.sort(key=lambda r: (-confidence_of(r), r["qid"]))
    right = np.cumsum([r["verdict"] == CORRECT for r in answered])
    counts = np.arange(1, len(answered) + 1)
    accuracy = right / counts  # empty when the arm declined everything
    half = -(-len(pool) // 2)
    good = [confidence_of(r) for r in answered if r["verdict"] == CORRECT]
    bad = [confidence_of(r) for r in answered if r["verdict"] != CORRECT]
    auroc = (float(mannwhitneyu(good, bad).statistic) / (len(good) * len(bad))) if good and bad else None
    return {"n": len(pool), "unanswerable": sum(r["set"] == "unanswerable" for r in pool), "answered": len(answered),
            "confidence": "head" if any(r.get("answerable") is not None for r in pool) else "logprob",
            "points": [[round(c / len(pool), 4), round(float(a), 4)] for c, a in zip(counts, accuracy)],
            "aurc": round(float(1 - accuracy.mean()), 4) if len(answered) else None,
            "selective_accuracy": round(float(accuracy[half - 1]), 4) if len(answered) >= half else None,
            "confidence_auroc": round(auroc, 4) if auroc is not None else None}


def risk_coverage_figures(rows: list[dict]) -> dict:
    """results.json's "risk_coverage": per arm and answerable set (with the unanswerable questions), `risk_coverage`."""
    sets = [s for s in dict.fromkeys(r["set"] for r in rows) if s != "unanswerable"]
    out: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        figures = {s: f for s in sets if (f := risk_coverage(rows, arm, s)) is not None}
        if figures:
            out[arm] = figures
    return out


def comparisons(rows: list[dict], seed: int, resamples: int = 2000, set_name: str = "heldout") -> dict:
    """results.json's "comparisons": paired held-out accuracy differences for the pairs the claims are about."""
    out = {}
    for a, b in COMPARISONS:
        figures = paired_difference(rows, a, b, set_name, seed, resamples)
        if figures is not None:
            out[f"{a}_vs_{b}"] = {"set": set_name, **figures}
    return out
