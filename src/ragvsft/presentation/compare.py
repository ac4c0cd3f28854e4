"""Tables across run folders, from their results.json files only: a row per setting, a column per arm and set,
mean ± sd over seeds where a setting ran with several.

    ragvsft compare runs/paraphrases                  # a sweep folder: its runs, comparison.* written into it
    ragvsft compare runs/quick runs/full --out runs/quick-vs-full

Writes comparison.md, comparison.csv, comparison.tex (booktabs), comparison.png (the swept value against held-out
and seen accuracy per arm) and report.html. A setting is every config key whose value differs between the runs
(the seed apart: runs that differ only in seed are one setting's repeats).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import statistics
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..catalogue import SHORT_LABELS, label  # noqa: E402
from ..config import flatten  # noqa: E402
from ..metrics import SETS as ALL_SETS  # noqa: E402
from ..files import InputError, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, require_complete_run  # noqa: E402

SETS = tuple(s.name for s in ALL_SETS if s.compared)
SET_NAMES = {s.name: s.label + ("" if s.answerable else " (abstained)") for s in ALL_SETS if s.compared}
NOT_RECORDED = "not recorded"
IGNORED = ("name", "out", "seed")  # never a setting: names, places, and the seed (repeats of one setting)
IGNORED_SECTIONS = ("cost.",)  # the cost table's assumptions change no figure that is compared


def run_folders(paths: list[Path]) -> list[Path]:
    """Run folders from the arguments: a sweep folder stands for the runs its sweep.json lists."""
    folders: list[Path] = []
    for path in map(Path, paths):
        sweep = path / "sweep.json"
        if sweep.is_file():
            record = read_json(sweep, "run the sweep again to rewrite it")
            runs = record.get("runs") if isinstance(record, dict) else None
            if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("folder"), str) for r in runs):
                raise InputError([f"{sweep}:1: not the record of a ragvsft sweep (no list of runs); run the sweep again"])
            if record.get("status") != "complete":
                raise InputError([f"{sweep}:1: the sweep did not finish; run `ragvsft sweep` with its file again"])
            folders += [path / run["folder"] for run in runs]
        elif (path / "results.json").is_file() or (path / "manifest.json").exists():
            folders.append(path)
        else:
            raise InputError([f"{path}:0: neither a run folder (results.json) nor a sweep folder (sweep.json)"])
    if not folders:
        raise InputError(["compare: no run folders given"])
    return folders


def load_runs(folders: list[Path]) -> list[dict]:
    """Each complete run's results.json, with the folder it came from."""
    runs = []
    for folder in folders:
        require_complete_run(folder)
        results = read_json(folder / "results.json", "run it again to recompute it")
        if not isinstance(results, dict) or not isinstance(results.get("arms"), dict):
            raise InputError([f"{folder / 'results.json'}:1: not the results of a ragvsft run (no \"arms\" mapping)"])
        config = results.get("config")
        if not isinstance(config, dict):  # runs from before results.json recorded the config: the folder's copy
            try:
                config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError):
                config = None
            if not isinstance(config, dict):
                raise InputError([f"{folder / 'config.yaml'}:1: missing or damaged; run the experiment again"])
        flat = {k: json.dumps(v) if isinstance(v, list) else v for k, v in flatten(config).items()}  # lists: one value
        runs.append({"folder": str(folder), "results": results, "config": flat})
    return runs


def _mean_sd(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "values": values}


def comparison(runs: list[dict]) -> dict:
    """Settings that differ, and per setting (in the runs' order) the mean ± sd of every arm's accuracy per set."""
    keys = sorted(k for k in {k for run in runs for k in run["config"]} - set(IGNORED) if not k.startswith(IGNORED_SECTIONS))
    varying = [k for k in keys if len({json.dumps(run["config"].get(k, NOT_RECORDED), sort_keys=True) for run in runs}) > 1]
    groups: dict[str, dict] = {}
    for run in runs:
        # A key the run did not record (made before the key existed) is shown as such, never as today's default.
        setting = {k: run["config"].get(k, NOT_RECORDED) for k in varying}
        group = groups.setdefault(json.dumps(setting, sort_keys=True), {"setting": setting, "runs": []})
        group["runs"].append(run)
    arms = list(dict.fromkeys(arm for run in runs for arm in run["results"]["arms"]))
    rows = []
    for group in groups.values():
        figures: dict = {}
        for arm in arms:
            for set_name in SETS:
                values = [run["results"]["arms"][arm][set_name]["accuracy"] for run in group["runs"]
                          if set_name in run["results"]["arms"].get(arm, {})]
                if values:
                    figures.setdefault(arm, {})[set_name] = _mean_sd(values)
        rows.append({"setting": group["setting"], "seeds": [run["config"].get("seed") for run in group["runs"]],
                     "folders": [run["folder"] for run in group["runs"]], "figures": figures})
    columns = [(arm, s) for arm in arms for s in SETS if any(s in row["figures"].get(arm, {}) for row in rows)]
    return {"settings": varying, "arms": arms, "columns": columns, "rows": rows}


def _setting_text(row: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in row["setting"].items()) or "(one setting)"


def _cell(figure: dict | None, latex: bool = False) -> str:
    if not figure:
        return "–"
    text = f"{100 * figure['mean']:.1f}"
    if figure["sd"] is not None:
        text += f" $\\pm$ {100 * figure['sd']:.1f}" if latex else f" ± {100 * figure['sd']:.1f}"
    return text


def comparison_markdown(table: dict) -> str:
    header = ["setting", "seeds"] + [f"{label(a)}: {SET_NAMES[s]}" for a, s in table["columns"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        cells = [_setting_text(row).replace("|", "\\|"), str(len(row["seeds"]))]
        cells += [_cell(row["figures"].get(a, {}).get(s)) for a, s in table["columns"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nAccuracy in %, mean ± sd over seeds (sd where a setting ran with more than one seed); "
                               "on unanswerable questions the share abstained.\n")


def comparison_csv(table: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*table["settings"], "seeds", "arm", "set", "mean", "sd", "n", "values"])
    for row in table["rows"]:
        for (arm, set_name) in table["columns"]:
            figure = row["figures"].get(arm, {}).get(set_name)
            if figure:
                writer.writerow([*(row["setting"][k] for k in table["settings"]), " ".join(map(str, row["seeds"])), arm,
                                 set_name, figure["mean"], "" if figure["sd"] is None else figure["sd"],
                                 len(figure["values"]), " ".join(map(str, figure["values"]))])
    return buffer.getvalue()


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(c, c) for c in str(text))


def comparison_latex(table: dict) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); accuracy in %, mean $\\pm$ sd over seeds."""
    columns = table["columns"]
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * (1 + len(columns)) + "}", r"\toprule",
             " & ".join(["Setting", "Seeds", *(latex_escape(f"{label(a)}: {SET_NAMES[s]}") for a, s in columns)]) + r" \\",
             r"\midrule"]
    for row in table["rows"]:
        cells = [latex_escape(_setting_text(row)), str(len(row["seeds"]))]
        cells += [_cell(row["figures"].get(a, {}).get(s), latex=True) for a, s in columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{Accuracy (\%) per arm and question set, mean $\pm$ sd over seeds; on unanswerable questions "
              r"the share abstained. Generated by \texttt{ragvsft compare}.}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _x_values(table: dict) -> tuple[list[float], list[str], str]:
    """Positions on the x axis: the swept value when one numeric setting varies, else the row's index."""
    rows, keys = table["rows"], table["settings"]
    texts = [_setting_text(row) if len(keys) == 1 else Path(row["folders"][0]).name for row in rows]
    if len(keys) == 1 and all(isinstance(row["setting"][keys[0]], (int, float)) and not isinstance(row["setting"][keys[0]], bool)
                              for row in rows):
        return [float(row["setting"][keys[0]]) for row in rows], [str(row["setting"][keys[0]]) for row in rows], keys[0]
    return list(range(len(rows))), texts, "setting" if len(keys) == 1 else "run (settings: comparison.md)"


def comparison_plot(table: dict) -> bytes:
    """Held-out (solid) and seen (dashed) accuracy per arm against the swept value, ± sd over seeds."""
    xs, ticks, name = _x_values(table)
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(table["arms"]):
        for set_name, style in (("heldout", "-"), ("seen", "--")):
            points = [(xs[j], table["rows"][j]["figures"].get(arm, {}).get(set_name)) for j in order]
            points = [(x, f) for x, f in points if f]
            if not points:
                continue
            ax.errorbar([x for x, _ in points], [f["mean"] for _, f in points],
                        yerr=[f["sd"] or 0.0 for _, f in points], linestyle=style, marker="o", capsize=3,
                        color=colours[i % len(colours)],
                        label=f"{SHORT_LABELS.get(arm, arm)} {SET_NAMES[set_name]}")
    ax.set_xticks([xs[j] for j in order], [ticks[j] for j in order], fontsize=8, rotation=15 if len(ticks) > 3 else 0)
    ax.set_xlabel(name)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("Accuracy across runs (solid: held-out, dashed: seen; ± sd over seeds)")
    ax.legend(fontsize=7, ncols=2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _check_out(out: Path) -> None:
    """The comparison goes into a new folder, a sweep folder or an earlier comparison's: never over a run's report."""
    if out.exists() and not out.is_dir():
        raise InputError([f"{out}:0: --out names a file; choose a folder"])
    if out.is_dir() and any(out.iterdir()) and not ((out / "sweep.json").is_file() or (out / "comparison.json").is_file()):
        raise InputError([f"{out}:0: --out names a folder that holds other files (a run folder?); its report.html would "
                          "be replaced: choose a new folder"])


def write_comparison(out: Path, paths: list[Path]) -> dict:
    """comparison.md/.csv/.tex/.png/.json and report.html in `out`, from the runs under `paths`; returns the table."""
    from .report import _environment

    out = Path(out)
    _check_out(out)
    runs = load_runs(run_folders(paths))
    table = comparison(runs)
    out.mkdir(parents=True, exist_ok=True)
    markdown = comparison_markdown(table)
    atomic_write_text(out / "comparison.md", markdown)
    atomic_write_text(out / "comparison.csv", comparison_csv(table))
    atomic_write_text(out / "comparison.tex", comparison_latex(table))
    png = comparison_plot(table)
    atomic_write_bytes(out / "comparison.png", png)
    atomic_write_json(out / "comparison.json", table)
    html = _environment(True).get_template("comparison.html.j2").render(
        t=table, image=base64.b64encode(png).decode("ascii"), label=label, set_names=SET_NAMES, cell=_cell,
        setting_text=_setting_text,
        reports=[(f, os.path.relpath(Path(f) / "report.html", out)) for row in table["rows"] for f in row["folders"]])
    atomic_write_text(out / "report.html", html)
    return table
