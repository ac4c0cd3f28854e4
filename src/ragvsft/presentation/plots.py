"""Plots (matplotlib, Agg) from results.json: rates per arm with confidence intervals, style against held-out accuracy,
retrieval recall@k, the training loss curve, seen against held-out accuracy, risk-coverage. Saved as PNG under `plots/`.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..catalogue import SHORT_LABELS  # noqa: E402
from ..files import atomic_write_bytes  # noqa: E402
from ..metrics import METRIC, SET, plotted  # noqa: E402

LABELS = SHORT_LABELS  # from the catalogue
COLOURS = {"accuracy": "#2e7d32", "hallucination_rate": "#c62828", "abstention_rate": "#757575"}


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _errorbars(figures: list[dict], key: str) -> list[list[float]]:
    return [[max(0.0, f[key] - f[f"{key}_ci"][0]) for f in figures], [max(0.0, f[f"{key}_ci"][1] - f[key]) for f in figures]]


def plot_rates(results: dict, set_name: str, path: Path) -> bool:
    arms = [a for a, f in results["arms"].items() if f.get(set_name)]
    if not arms:
        return False
    figures = [results["arms"][a][set_name] for a in arms]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    # On unanswerable questions accuracy is the share abstained (score.set_figures): one bar, not the same bar twice.
    keys = plotted(set_name)
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(arms))]
        name = "abstained (right)" if not SET[set_name].answerable and key == "abstention_rate" else METRIC[key].label
        ax.bar(xs, [f[key] for f in figures], width, yerr=_errorbars(figures, key), capsize=3, color=COLOURS[key],
               label=name)
    ax.set_xticks(range(len(arms)), [LABELS.get(a, a) for a in arms])
    ax.set_ylim(0, 1.22)  # headroom so the legend sits above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("share of answers")
    title = (f"{SET[set_name].label.capitalize()} questions" + ("" if SET[set_name].answerable else
                                                               " (abstaining is right)"))
    ax.set_title(f"{title}, 95% bootstrap intervals")
    ax.legend(ncols=3, fontsize=8, loc="upper center")
    _save(fig, path)
    return True


def plot_style_vs_facts(results: dict, path: Path) -> bool:
    arms = [a for a, f in results["arms"].items() if f.get("heldout")]
    if not arms:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for arm in arms:
        f = results["arms"][arm]
        x, y = f["style_adherence"], f["heldout"]["accuracy"]
        ax.scatter([x], [y], s=70)
        ax.annotate(LABELS.get(arm, arm), (x, y), textcoords="offset points", xytext=(6, 4))
    ax.set_xlim(-0.05, 1.1)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("house-style adherence")
    ax.set_ylabel("held-out accuracy (facts)")
    ax.set_title("Style versus facts")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def _line(path: Path, xs: list, ys: list, xlabel: str, ylabel: str, title: str, marker: str | None = None,
          ylim: tuple[float, float] | None = None) -> bool:
    """One line on a small grid, saved to `path`."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(xs, ys, marker=marker)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_recall(results: dict, path: Path) -> bool:
    recall = results.get("retrieval", {}).get("recall_at")
    if not recall:
        return False
    ks = sorted(recall, key=int)
    return _line(path, [int(k) for k in ks], [recall[k] for k in ks], "k (chunks retrieved)", "recall@k",
                 "Retrieval: evidence chunk in the top k", marker="o", ylim=(0, 1.05))


def plot_loss(results: dict, path: Path) -> bool:
    loss = (results.get("training") or {}).get("loss")
    if not loss:
        return False
    return _line(path, [s for s, _ in loss], [v for _, v in loss], "training step", "loss (answer tokens)",
                 "LoRA training loss")


def plot_seen_vs_heldout(results: dict, path: Path) -> bool:
    arms = [a for a, f in results["arms"].items() if f.get("seen") and f.get("heldout")]
    if not arms:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.38
    for i, (set_name, colour) in enumerate((("seen", "#1565c0"), ("heldout", "#ef6c00"))):
        figures = [results["arms"][a][set_name] for a in arms]
        ax.bar([j + (i - 0.5) * width for j in range(len(arms))], [f["accuracy"] for f in figures], width,
               yerr=_errorbars(figures, "accuracy"), capsize=3, color=colour,
               label="seen in training" if set_name == "seen" else "held-out wording")
    ax.set_xticks(range(len(arms)), [LABELS.get(a, a) for a in arms])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("Same facts, trained wording versus new wording")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_learning_curve(results: dict, path: Path) -> bool:
    """Gekhman et al. (2024) Fig. 1 style: as the closed-book model trains, what happens to seen and held-out
    accuracy and to hallucination on questions nobody can answer."""
    curve = results.get("curves") or []
    if len(curve) < 2:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [p["epoch"] for p in curve]
    for key, label, colour in (("seen", "seen questions: accuracy", "#1565c0"),
                               ("heldout", "held-out questions: accuracy", "#ef6c00"),
                               ("unanswerable_hallucination", "unanswerable: hallucinated", "#c62828"),
                               ("style", "house style", "#757575")):
        ys = [p.get(key) for p in curve]
        if any(y is not None for y in ys):
            ax.plot(epochs, ys, marker="o", label=label, color=colour, linestyle="--" if key == "style" else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("share of answers")
    ax.set_ylim(-0.02, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_title("Learning curve of the closed-book LoRA model")
    ax.legend(ncols=2, fontsize=8, loc="upper center")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_risk_coverage(results: dict, path: Path) -> bool:
    """Accuracy on the answered questions against the share answered, per arm, as each arm answers only its most
    confident answers (score.risk_coverage): one panel per answerable set, with the unanswerable questions."""
    curves = results.get("risk_coverage") or {}
    # the compared answerable sets (held-out, seen); reverse questions are too few for a curve
    sets = [s for s in dict.fromkeys(s for per_arm in curves.values() for s in per_arm) if SET[s].compared]
    if not sets:
        return False
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 3.6), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        for arm, per_set in curves.items():
            points = (per_set.get(set_name) or {}).get("points")
            if points:
                ax.plot([c for c, _ in points], [a for _, a in points], label=LABELS.get(arm, arm))
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("share of questions answered (most confident first)")
        ax.set_ylabel("accuracy on those answered")
        ax.set_title(f"Risk-coverage: {SET[set_name].label} + unanswerable")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    _save(fig, path)
    return True


def plot_update(results: dict, path: Path) -> bool:
    """The knowledge-update experiment: current, stale and other answers per arm after the switch to the new version,
    and for the adapter arms after retraining, as stacked bars labelled with what the update took."""
    update = results.get("update")
    if not update:
        return False
    bars = [(f"{LABELS.get(a, a)}\n{f['action'].split(':')[0]}", f) for a, f in update["arms"].items()]
    bars += [(f"{LABELS.get(a, a)}\n{f['action']} ({f['update_seconds']:.0f} s)", f)
             for a, f in (update.get("retrained") or {}).items()]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(bars)), 3.8))
    bottom = [0.0] * len(bars)
    for key, colour in (("current", "#2e7d32"), ("stale", "#c62828"), ("other", "#9e9e9e")):
        values = [f[key] for _, f in bars]
        ax.bar(range(len(bars)), values, 0.6, bottom=bottom, color=colour, label=key)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=7)
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("share of answers")
    ax.set_title(f"After {update['facts_changed']} facts changed: current or stale answers")
    ax.legend(ncols=3, fontsize=8, loc="upper center")
    _save(fig, path)
    return True


PLOTS = {
    "rates_heldout": lambda r, p: plot_rates(r, "heldout", p),
    "rates_unanswerable": lambda r, p: plot_rates(r, "unanswerable", p),
    "style_vs_facts": plot_style_vs_facts,
    "update": plot_update,
    "seen_vs_heldout": plot_seen_vs_heldout,
    "retrieval_recall": plot_recall,
    "training_loss": plot_loss,
    "learning_curve": plot_learning_curve,
    "risk_coverage": plot_risk_coverage,
}


def write_plots(folder: Path, results: dict) -> dict[str, Path]:
    """Every plot the results allow, as `folder/<name>.png`; returns name -> path."""
    written = {}
    for name, draw in PLOTS.items():
        path = Path(folder) / f"{name}.png"
        if draw(results, path):
            written[name] = path
    return written
