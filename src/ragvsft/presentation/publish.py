"""Write every report of a run folder from its results: results.csv, report.md, plots/*.png, report.html and the
closed-book adapter's model card (adapter/README.md).

    ragvsft report runs/quick      # the same from a finished run's results.json

It sits above the modules it calls (report: tables and findings; plots; html), so none of them imports another's
writer.
"""

from __future__ import annotations

from pathlib import Path

from ..claims import evaluate_claims
from ..files import atomic_write_json, atomic_write_text
from .card import adapter_card
from .html import render_html
from .plots import write_plots
from .report import render_markdown, results_csv


def write_reports(run_dir: Path, results: dict, predictions: list[dict]) -> None:
    """results.json with the claims ledger decided once from its figures (claims.yaml as it is now, so `ragvsft
    report` after a ledger change updates the verdicts too), then results.csv, report.md, plots/*.png and
    report.html, all from `results` (plus the predictions for the explorer)."""
    run_dir = Path(run_dir)
    results["claims"] = evaluate_claims(results)
    atomic_write_json(run_dir / "results.json", results)
    atomic_write_text(run_dir / "results.csv", results_csv(results))
    atomic_write_text(run_dir / "report.md", render_markdown(results))
    plots = write_plots(run_dir / "plots", results)
    atomic_write_text(run_dir / "report.html", render_html(results, predictions, plots, run_dir))
    if (run_dir / "adapter" / "adapter_config.json").is_file() and results.get("training"):
        atomic_write_text(run_dir / "adapter" / "README.md", adapter_card(results))
