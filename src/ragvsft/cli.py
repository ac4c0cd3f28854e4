"""Command line: parses arguments and calls the library; nothing else lives here.

    ragvsft run experiments/quick.yaml [--corpus DIR] [--out DIR] [--set key=value ...]
    ragvsft corpus check DIR | ragvsft corpus stats DIR
    ragvsft report RUN | ragvsft cost RUN --queries-per-month N | ragvsft ask RUN "question" | ragvsft demo RUN

Bad input (corpus, config, run folder, missing model package) prints `file:line: message` lines and exits with 2.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .files import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prompt it, retrieve for it, or fine-tune it? Measured on your own documents.")
corpus_app = typer.Typer(no_args_is_help=True, help="Check a corpus folder and show its sizes.")
app.add_typer(corpus_app, name="corpus")
out = Console()
err = Console(stderr=True)


def input_errors(func):
    """Turn InputError into its messages on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InputError as exc:
            for problem in exc.problems:
                err.print(escape(problem), style="red", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@input_errors
def run(config: Path = typer.Argument(..., help="experiment file, e.g. experiments/quick.yaml"),
        corpus: Path = typer.Option(None, help="corpus folder (overrides the config's 'corpus')"),
        out_dir: Path = typer.Option(None, "--out", help="run folder (default runs/<name>)"),
        set_: list[str] = typer.Option([], "--set", help="override a config key: --set finetune.epochs=1")):
    """Run every arm on the probe and write the run folder (predictions, results, reports, manifest)."""
    from .config import load_config
    from .presentation.report import markdown_table
    from .run import run_experiment

    cfg = load_config(config, set_, corpus=str(corpus) if corpus else None, out=str(out_dir) if out_dir else None)
    run_dir = run_experiment(cfg, err)
    results = json.loads((run_dir / "results.json").read_text())
    out.print(markdown_table(results), highlight=False, soft_wrap=True)
    out.print(f"\nReport: {run_dir / 'report.md'} and {run_dir / 'report.html'}", highlight=False)


@app.command()
@input_errors
def sweep(config: Path = typer.Argument(..., help="experiment file with a sweep: section, e.g. experiments/paraphrases.yaml"),
          corpus: Path = typer.Option(None, help="corpus folder (overrides the config's 'corpus')"),
          out_dir: Path = typer.Option(None, "--out", help="sweep folder (default runs/<name>)"),
          set_: list[str] = typer.Option([], "--set", help="override a config key in every run: --set finetune.epochs=1"),
          devices: str = typer.Option(None, help="place the runs on these devices, one run each at a time, e.g. "
                                                 "cuda:0,cuda:1")):
    """Run one run folder per combination of the sweep section's values and seeds, then compare them."""
    from .sweep import parse_devices, run_sweep

    folder = run_sweep(config, set_, err, corpus=str(corpus) if corpus else None, out=str(out_dir) if out_dir else None,
                       devices=parse_devices(devices))
    out.print((folder / "comparison.md").read_text(encoding="utf-8"), highlight=False, soft_wrap=True)
    out.print(f"Comparison: {folder / 'comparison.md'} (.csv, .tex, .png) and {folder / 'report.html'}", highlight=False)


@app.command()
@input_errors
def compare(folders: list[Path] = typer.Argument(..., help="run folders and/or sweep folders"),
            out_dir: Path = typer.Option(None, "--out", help="where to write comparison.* (default: the one sweep "
                                                             "folder given, else runs/comparison)")):
    """One table across run folders from their results.json: a row per setting, mean ± sd over seeds."""
    from .presentation.compare import write_comparison

    if out_dir is None:
        out_dir = folders[0] if len(folders) == 1 and (folders[0] / "sweep.json").is_file() else Path("runs/comparison")
    write_comparison(out_dir, folders)
    out.print((out_dir / "comparison.md").read_text(encoding="utf-8"), highlight=False, soft_wrap=True)
    out.print(f"Comparison: {out_dir / 'comparison.md'} (.csv, .tex, .png) and {out_dir / 'report.html'}", highlight=False)


@corpus_app.command("check")
@input_errors
def corpus_check(folder: Path = typer.Argument(..., help="corpus folder")):
    """Validate a corpus; print a one-line summary, or every problem as file:line: message (exit 2)."""
    from .corpus import load_corpus

    c = load_corpus(folder)
    out.print(f"{folder}: ok — {len(c.documents)} documents, {len(c.facts)} facts, "
              f"{sum(1 for f in c.facts if f.reverse)} with reverse questions, {len(c.unanswerable)} unanswerable questions"
              + (f"; updates/: {len(c.updates)} changed facts in {len(c.updated_documents)} revised documents"
                 if c.updates else ""),
              highlight=False)


@corpus_app.command("stats")
@input_errors
def corpus_stats_command(folder: Path = typer.Argument(..., help="corpus folder"),
                         as_json: bool = typer.Option(False, "--json", help="print the figures as JSON")):
    """Documents by kind, words, facts, questions per set, facts per document."""
    from .corpus import corpus_stats, load_corpus

    stats = corpus_stats(load_corpus(folder))
    if as_json:
        out.print_json(json.dumps(stats))
        return
    table = Table(title=f"corpus {escape(stats['name'])}", show_header=False)
    table.add_row("documents", str(stats["documents"]))
    for kind, n in stats["documents_by_kind"].items():
        table.add_row(f"  {escape(kind)}", str(n))
    w = stats["words"]
    table.add_row("words", f"{w['total']:,} (per document: min {w['min']}, median {w['median']}, max {w['max']})")
    table.add_row("facts", str(stats["facts"]))
    table.add_row("facts with reverse questions", str(stats["facts_with_reverse"]))
    for name, n in stats["questions"].items():
        table.add_row(f"{name} questions", str(n))
    fpd = stats["facts_per_document"]
    table.add_row("facts per document", f"min {fpd['min']}, median {fpd['median']}, max {fpd['max']}, "
                                        f"documents without facts {fpd['without_facts']}")
    out.print(table)


@app.command()
@input_errors
def report(run_dir: Path = typer.Argument(..., help="a finished run folder")):
    """Regenerate results.csv, report.md, report.html and plots from the run's results.json."""
    from .presentation.publish import write_reports
    from .presentation.report import load_run

    results, predictions = load_run(run_dir)
    write_reports(run_dir, results, predictions)
    out.print(f"Report: {run_dir / 'report.md'} and {run_dir / 'report.html'}", highlight=False)


@app.command()
@input_errors
def cost(run_dir: Path = typer.Argument(..., help="a finished run folder"),
         queries_per_month: int = typer.Option(None, min=1, help="expected queries per month [run's cost section]"),
         input_price: float = typer.Option(None, min=0, help="USD per million prompt tokens"),
         output_price: float = typer.Option(None, min=0, help="USD per million generated tokens"),
         compute_price: float = typer.Option(None, min=0, help="USD per hour of the machine that trains the adapter"),
         hosting: float = typer.Option(None, min=0, help="USD per month to host a dedicated fine-tuned model"),
         retrains: float = typer.Option(None, min=0, help="adapter retrains per month (documents change)")):
    """Monthly cost of each arm from the run's measured tokens, and fine-tuning's break-even volume against RAG.
    Unset flags keep the run's `cost:` section (defaults.yaml)."""
    from .cost import cost_table, run_costs
    from .presentation.report import cost_markdown, load_run

    flags = {"--input-price": input_price, "--output-price": output_price, "--compute-price": compute_price,
             "--hosting": hosting, "--retrains": retrains}
    bad = [f"{name}: {value} is not a finite number" for name, value in flags.items()
           if value is not None and not math.isfinite(value)]
    if bad:
        raise InputError(bad)
    results, _ = load_run(run_dir)
    prices = run_costs(results, queries_per_month=queries_per_month, input_per_million=input_price,
                       output_per_million=output_price, compute_per_hour=compute_price,
                       finetuned_hosting_per_month=hosting, retrains_per_month=retrains)
    out.print(cost_markdown(cost_table(results, prices)), highlight=False, soft_wrap=True)


@app.command()
@input_errors
def ask(run_dir: Path = typer.Argument(..., help="a finished run folder"),
        question: str = typer.Argument(..., help="the question to put to every arm"),
        arms: str = typer.Option(None, help="comma-separated arms (default: the run's arms)")):
    """Put one question to every arm of a run and show the answers side by side."""
    from .live import Session, render_answers

    chosen = [a.strip() for a in arms.split(",")] if arms else None
    session = Session.open(run_dir, arms=chosen)
    render_answers(out, session.ask(question, chosen))


@app.command()
@input_errors
def demo(run_dir: Path = typer.Argument(..., help="a finished run folder"),
         host: str = typer.Option("127.0.0.1", help="address to bind; the default keeps the page on this machine"),
         port: int = typer.Option(7860, help="port")):
    """A local web page: type a question, see every arm's answer and the retrieved passages side by side."""
    from .demo import launch

    launch(run_dir, host, port)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
