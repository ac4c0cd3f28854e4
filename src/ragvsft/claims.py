"""The claims ledger: every testable claim of the four seed articles, decided from a run's results.json.

    ragvsft report runs/quick      # report.md and report.html show the ledger: claim, source, figures, verdict

The claims, their sources and their rules live in `claims.yaml` (its header documents the rule syntax). A verdict is
computed, never typed: `supported` or `contradicted` when the measured difference is clear (a paired 95% interval
where results.json has one, else two intervals that do not overlap, else the exact figures), `inconclusive` when the
interval includes zero, `not tested` when the run did not measure a figure the rule needs (the reason says which).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from .catalogue import ARMS, label
from .files import InputError, load_yaml_with_lines
from .metrics import SET, SHARES

LEDGER_PATH = Path(__file__).with_name("claims.yaml")
SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED = "supported", "contradicted", "inconclusive", "not tested"
_TEST = re.compile(r"^(\S+)\s*(>=|<=|>|<)\s*(?:([0-9.]+)\s*\*\s*)?(\S+)$")
TIMING_NOISE = 0.10  # the same run timed twice on the 2-core machine differed by up to ~10%


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str  # the article's file name in ../shared/seeds/
    test: str | None  # "A > B" (see claims.yaml); None for a claim no run here can decide
    untested: str | None = None  # why not
    line: int = 0


@dataclass(frozen=True)
class Figure:
    value: float
    ci: list[float] | None
    text: str


class _Missing(Exception):
    """A figure the run did not measure; the message is the reason."""


def load_ledger(path: Path = LEDGER_PATH) -> list[Claim]:
    """The ledger's claims; every malformed entry is reported as file:line."""
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, list):
        raise InputError([f"{path}:1: the ledger must be a list of claims"])
    problems, claims = [], []
    for i, entry in enumerate(data):
        line = lines.get((i,), 1) if isinstance(lines, dict) else 1
        if not isinstance(entry, dict):
            problems.append(f"{path}:{line}: each claim must be a mapping")
            continue
        unknown = set(entry) - {"claim", "source", "test", "untested"}
        missing = {"claim", "source"} - set(entry)
        problems += [f"{path}:{line}: unknown key '{k}'" for k in sorted(unknown, key=str)]
        problems += [f"{path}:{line}: missing key '{k}'" for k in sorted(missing)]
        if ("test" in entry) == ("untested" in entry):
            problems.append(f"{path}:{line}: give either 'test' (the rule) or 'untested' (why no run can decide it)")
        elif "test" in entry and not (isinstance(entry["test"], str) and _TEST.match(entry["test"].strip())):
            problems.append(f"{path}:{line}: 'test' must read 'A > B', 'A < B' or 'A >= 0.8 * B', got {entry['test']!r}")
        if not unknown and not missing and not any(p.startswith(f"{path}:{line}:") for p in problems):
            claims.append(Claim(" ".join(str(entry["claim"]).split()), str(entry["source"]),
                                entry.get("test", "").strip() or None, entry.get("untested"), line))
    if problems:
        raise InputError(problems)
    return claims


def _format(path: str, value: float) -> str:
    metric = path.rsplit(".", 1)[-1]
    if math.isinf(value):
        return "never" if path.startswith("cost.") else "infinity"
    if metric in SHARES:
        return f"{100 * value:.0f}%"
    if metric.startswith("break_even") or path.startswith("cost."):
        return f"{value:,.0f} queries/month"
    if "seconds" in path or path.startswith("update.seconds"):
        return f"{value:.3g} s"
    if "tokens" in metric:
        return f"{value:.0f} tokens"
    return f"{value:g}"


def _name(path: str) -> str:
    """A reader's name for a figure path: "RAG held-out accuracy", "update: LoRA fine-tuned current (retrained)"."""
    parts = path.split(".")
    words = [label(p) if p in ARMS else (SET[p].label if p in SET else p.replace("_", " ")) for p in parts]
    if parts[0] == "update" and parts[1] in ("arms", "retrained"):
        return f"{words[2]} {words[3]} after the update" + (" and retraining" if parts[1] == "retrained" else "")
    if parts[0] == "update":
        return f"seconds to {dict(reindex='re-index', prompt='rebuild the prompts', retrain='retrain').get(parts[2], parts[2])}"
    if parts[0] == "cost":
        return f"{words[2]} break-even against RAG"
    return " ".join(words)


def resolve(results: dict, path: str, like: str = "") -> Figure:
    """The figure a rule names (see claims.yaml), with its 95% interval when results.json has one; a number is shown
    in the units of the figure it is compared with (`like`)."""
    try:
        value = float(path)
        return Figure(value, None, "infinity" if math.isinf(value) else _format(like, value))
    except ValueError:
        pass
    parts = path.split(".")
    if parts[0] == "update":
        node = results.get("update")
        if not node:
            raise _Missing("the knowledge-update experiment did not run (experiments/update.yaml)")
    elif parts[0] == "cost":
        from .cost import cost_table

        if len(parts) != 3 or parts[2] not in results.get("arms", {}) or "rag" not in results.get("arms", {}):
            raise _Missing(f"needs the arms rag and {parts[-1]}")
        volume = cost_table(results)[parts[1]].get(parts[2])
        value = math.inf if volume is None else float(volume)
        return Figure(value, None, f"{_name(path)} {_format(path, value)}")
    else:
        if parts[0] not in results.get("arms", {}):
            raise _Missing(f"the arm {label(parts[0])} was not run")
        node = results["arms"]
        if len(parts) == 3 and parts[1] not in node[parts[0]]:
            raise _Missing(f"the set {parts[1]} was not asked")
    parent = node
    for part in parts[1 if parts[0] == "update" else 0:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
        if parent is None:
            raise _Missing(f"{_name(path)} was not measured in this run")
    value = parent.get(parts[-1]) if isinstance(parent, dict) else None
    if value is None:
        raise _Missing(f"{_name(path)} was not measured in this run")
    ci = parent.get(f"{parts[-1]}_ci")
    text = f"{_name(path)} {_format(path, value)}"
    if ci:
        text += f" [{_format(path, ci[0])}–{_format(path, ci[1])}]"
    return Figure(float(value), ci, text)


def _paired(results: dict, a: str, b: str) -> tuple[float, list[float]] | None:
    """The paired held-out difference A − B from results.json `comparisons`, when the rule compares two arms' accuracy."""
    pa, pb = a.split("."), b.split(".")
    if len(pa) != 3 or len(pb) != 3 or pa[1:] != pb[1:] or pa[2] != "accuracy":
        return None
    for first, second, sign in ((pa[0], pb[0], 1), (pb[0], pa[0], -1)):
        c = results.get("comparisons", {}).get(f"{first}_vs_{second}")
        if c and c.get("set") == pa[1]:
            low, high = sorted(sign * x for x in c["ci"])
            return sign * c["difference"], [low, high]
    return None


def decide(results: dict, claim: Claim) -> dict:
    """One ledger row: the claim, its source, the figures the rule read and the verdict."""
    row = {"claim": claim.claim, "source": claim.source, "test": claim.test}
    if claim.test is None:
        return row | {"figures": "", "verdict": NOT_TESTED, "reason": claim.untested}
    a, op, factor, b = _TEST.match(claim.test).groups()
    try:
        fa, fb = resolve(results, a), resolve(results, b, like=a)
    except _Missing as missing:
        return row | {"figures": "", "verdict": NOT_TESTED, "reason": str(missing)}
    scale = float(factor) if factor else 1.0
    higher = op in (">", ">=")
    figures = f"{fa.text} vs {f'{scale:g} × ' if factor else ''}{fb.text}"
    paired = _paired(results, a, b) if not factor else None
    if paired:
        difference, (low, high) = paired
        figures += f"; paired difference {100 * difference:+.0f} points [{100 * low:+.0f}, {100 * high:+.0f}]"
    elif fa.ci and fb.ci and not factor:
        low, high = fa.ci[0] - fb.ci[1], fa.ci[1] - fb.ci[0]  # the intervals overlap exactly when 0 lies in here
    else:  # exact figures (tokens, seconds, style shares, volumes): compared as measured
        left, right = fa.value, scale * fb.value
        if "seconds" in a and abs(left - right) < TIMING_NOISE * max(abs(left), abs(right)):
            return row | {"figures": figures, "verdict": INCONCLUSIVE,
                          "reason": f"the timings are within {100 * TIMING_NOISE:.0f}% of each other, this machine's "
                                    "run-to-run noise"}
        if left == right:
            holds = op in (">=", "<=")
            return row | {"figures": figures, "verdict": SUPPORTED if holds else CONTRADICTED,
                          "reason": "" if holds else "the two figures are equal"}
        holds = (left > right) == higher
        return row | {"figures": figures, "verdict": SUPPORTED if holds else CONTRADICTED, "reason": ""}
    if low > 0 or high < 0:
        holds = (low > 0) == higher
        return row | {"figures": figures, "verdict": SUPPORTED if holds else CONTRADICTED, "reason": ""}
    if low == high == 0:
        return row | {"figures": figures, "verdict": CONTRADICTED, "reason": "the two figures are equal"}
    return row | {"figures": figures, "verdict": INCONCLUSIVE,
                  "reason": "the 95% interval of the difference includes zero; a larger probe narrows it"}


def evaluate_claims(results: dict, ledger: list[Claim] | None = None) -> list[dict]:
    """results.json `claims`: one row per claim of the ledger, in its order."""
    return [decide(results, claim) for claim in (ledger if ledger is not None else load_ledger())]
