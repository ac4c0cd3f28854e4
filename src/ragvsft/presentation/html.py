"""report.html: one self-contained page (no network, no external scripts or fonts) with the comparison table,
findings, plots (embedded PNG), cost table and a question explorer.

Every piece of document or model text goes through jinja2's autoescape, so a `<script>` in a document or an answer is
shown as text, never run.
"""

from __future__ import annotations

import base64
from pathlib import Path

from ..cost import break_even_sentence, cost_table
from ..files import read_jsonl
from ..catalogue import label
from .report import ARM_LABELS, LITERATURE, SET_LABELS, _environment, claims_of, comparison_rows, context_rows, findings, pct, selective_rows, update_rows


def explorer_items(predictions: list[dict], chunk_texts: dict[str, str]) -> list[dict]:
    """One entry per question: its set, gold answer and every arm's answer with verdict, and the text the retrieving
    arms were shown (the units themselves, each with its source chunk; rows of runs that kept no `shown` fall back to
    the retrieved chunks whole)."""
    items: dict[str, dict] = {}
    for row in predictions:
        item = items.setdefault(row["qid"], {"qid": row["qid"], "set": row["set"], "question": row["question"],
                                             "gold": row["gold"], "answers": [], "chunks": []})
        item["answers"].append({"arm": label(row["arm"]), "answer": row["answer"],
                                "verdict": row["verdict"], "hedged": row.get("hedged", False), "style_ok": row["style_ok"]})
        if row.get("shown") and not item["chunks"]:
            item["chunks"] = [{"id": cid, "text": text} for cid, text in row["shown"]]
            item["answer_shown"] = row.get("answer_shown")
        elif row["retrieved"] and not item["chunks"]:
            item["chunks"] = [{"id": cid, "text": chunk_texts.get(cid, "")} for cid in row["retrieved"]]
    return list(items.values())


def render_html(results: dict, predictions: list[dict], plots: dict[str, Path], run_dir: Path | None = None) -> str:
    chunks_path = Path(run_dir) / "index" / "chunks.jsonl" if run_dir else None
    chunk_texts = {c["id"]: c["text"] for c in read_jsonl(chunks_path)} if chunks_path and chunks_path.is_file() else {}
    images = {name: base64.b64encode(Path(path).read_bytes()).decode("ascii") for name, path in plots.items()}
    rows = comparison_rows(results)
    costs = cost_table(results)
    return _environment(True).get_template("report.html.j2").render(
        r=results, rows=rows, headers=list(rows[0].keys()) if rows else [], findings=findings(results),
        images=images, literature=LITERATURE, costs=costs, break_even=break_even_sentence(costs),
        arm_labels=ARM_LABELS, set_labels=SET_LABELS, claims=claims_of(results), updates=update_rows(results), context=context_rows(results), selective=selective_rows(results), items=explorer_items(predictions, chunk_texts), pct=pct)
