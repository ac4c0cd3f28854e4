"""The knowledge-update experiment: what each arm answers after the documents change.

    ragvsft run experiments/update.yaml

The run trains and indexes on the corpus as it was; then the corpus's `updates/` part switches to the new version
(new document texts, changed facts with new answers). Every arm is asked the changed facts' questions again with
what it holds: retrieval gets a re-index of the new documents (seconds), the few-shot prompt is rebuilt from the
new facts, the closed-book adapter and the RAFT reader stay as trained. Each answer is `current` (names the new
answer), `stale` (names the old one) or `other` (neither or both; an answer that declines is `other` even when it
goes on to guess, as the probe scores it abstained). With `update.retrain` the
closed-book adapter is then retrained on the new version and asked again: the fix, and its cost in seconds.
"""

from __future__ import annotations

from .corpus import Corpus
from .probe import Question
from .score import CORRECT, matches_gold, mentions_any, rate_with_ci, verdict

CURRENT, STALE, OTHER = "current", "stale", "other"


def update_verdict(answer: str, new_gold: list[str], old_gold: list[str], abstain_phrases=()) -> str:
    """current: names the new answer and not the old; stale: the old and not the new; other: neither or both, or
    declines (an abstention phrase: "I can't find it... perhaps 64 euros" did not give the current answer)."""
    if mentions_any(answer, list(abstain_phrases)):
        return OTHER
    new, old = matches_gold(answer, new_gold), matches_gold(answer, old_gold)
    if new and not old:
        return CURRENT
    if old and not new:
        return STALE
    return OTHER


def changed_questions(before: list[Question], updated: Corpus) -> list[Question]:
    """The probe's held-out and seen questions of the changed facts, with the new answers as gold."""
    changes = {u.id: u for u in updated.updates}
    return [Question(q.set, q.qid, q.question, q.fact_id, tuple(changes[q.fact_id].gold)) for q in before
            if q.fact_id in changes and q.set in ("heldout", "seen")]


def rates(rows: list[dict], seed: int, resamples: int = 2000) -> dict:
    """Shares of current, stale and other answers among `rows` (each with an `update_verdict`), with 95% bootstrap
    intervals for current and stale."""
    figures: dict = {"n": len(rows)}
    for name in (CURRENT, STALE, OTHER):
        value, ci = rate_with_ci([r["update_verdict"] == name for r in rows], seed, resamples=resamples)
        figures[name] = round(value, 4)
        if name != OTHER:
            figures[f"{name}_ci"] = ci
    return figures


def update_figures(before: list[dict], after: list[dict], retrained: list[dict], old_gold: dict[str, list[str]],
                   costs: dict[str, tuple[str, float]], retrained_cost: dict[str, tuple[str, float]], seed: int,
                   resamples: int = 2000, abstain_phrases=()) -> dict:
    """results.json `update`: per arm, the answers before the switch (right = the old answer), after it, and (adapter
    arms) after retraining, each with the update it took and its measured seconds."""
    def per_arm(rows: list[dict]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for row in rows:
            out.setdefault(row["arm"], []).append(row)
        return out

    old_answer = {arm: sum(verdict(r["answer"], old_gold[r["fact_id"]], list(abstain_phrases)) == CORRECT
                           for r in rows) / len(rows)
                  for arm, rows in per_arm(before).items() if rows}
    arms = {}
    for arm, rows in per_arm(after).items():
        action, seconds = costs[arm]
        arms[arm] = {**rates(rows, seed, resamples), "before_right": round(old_answer.get(arm, 0.0), 4), "action": action,
                     "update_seconds": round(seconds, 3)}
    again = {}
    for arm, rows in per_arm(retrained).items():
        action, seconds = retrained_cost[arm]
        again[arm] = {**rates(rows, seed, resamples), "action": action, "update_seconds": round(seconds, 3)}
    return {"arms": arms, "retrained": again}
