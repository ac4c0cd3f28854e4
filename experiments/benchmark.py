"""Benchmark: time the quick and full profiles from scratch and record stage timings.

    .venv/bin/python experiments/benchmark.py                  # both profiles (about 35 minutes on 2 cores)
    .venv/bin/python experiments/benchmark.py --profile quick --readme
    .venv/bin/python experiments/benchmark.py --readme                 # only rewrite README.md from runs/benchmark.json
    .venv/bin/python experiments/benchmark.py --dtype-check --readme  # bfloat16 against float32 on the quick run
    .venv/bin/python experiments/benchmark.py --adapters --readme     # merged against named adapters on the quick run
    .venv/bin/python experiments/benchmark.py --negatives --readme    # embedder tuning with and without hard negatives
    .venv/bin/python experiments/benchmark.py --training --readme     # LoRA training speed: precision x batch size
    .venv/bin/python experiments/benchmark.py --sweep --readme        # epochs x learning rate x rank, LoRA arm only
    .venv/bin/python experiments/benchmark.py --context --readme      # how many sentences or rows the rag arm is shown
    .venv/bin/python experiments/benchmark.py --demos --readme        # worked reading examples in the rag prompt
    .venv/bin/python experiments/benchmark.py --contrast --readme     # context-aware decoding of the rag arm
    .venv/bin/python experiments/benchmark.py --raft-contrast --readme  # the same for the RAFT reader
    .venv/bin/python experiments/benchmark.py --plausibility --readme  # its plausibility constraint, both arms
    .venv/bin/python experiments/benchmark.py --unit-questions --readme  # the unit choice with train questions attached
    .venv/bin/python experiments/benchmark.py --gate --readme         # the decline gate's signals on the quick run
    .venv/bin/python experiments/benchmark.py --gate-ceiling --readme  # how far any threshold on them could go
    .venv/bin/python experiments/benchmark.py --reader-sweep --readme # RAFT reader settings, rag and raft arms only
    .venv/bin/python experiments/benchmark.py --profile update --readme  # the knowledge update and the claims ledger
    .venv/bin/python experiments/benchmark.py --profile harbourline --readme  # the quick profile on a second corpus
    .venv/bin/python experiments/benchmark.py --sweeps paraphrases --sweeps seeds --readme  # README "Sweeps"

Each profile runs in a fresh folder `runs/bench-<profile>` (nothing reused), as `ragvsft run` would. The figures go to
`runs/benchmark.json`; with --readme the "Measured" section of README.md between its benchmark markers is rewritten
from those files, so the README's figures are produced by a run, never typed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ragvsft.precision import cpu_name, matmul_rate  # noqa: E402
from ragvsft.files import atomic_write_json, atomic_write_text  # noqa: E402
from ragvsft.catalogue import label, model_of  # noqa: E402
from ragvsft.claims import evaluate_claims  # noqa: E402
from ragvsft.config import load_config  # noqa: E402
from ragvsft.presentation.report import cell, findings, markdown_table, update_rows  # noqa: E402

START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
SWEEPS_START, SWEEPS_END = "<!-- sweeps:start -->", "<!-- sweeps:end -->"
BARS = {"quick": 300, "full": 1200, "harbourline": 300}  # seconds: the bars of issue 20 on a 2-core CPU
PROFILES = ("quick", "full", "update", "harbourline")
# Profiles that run the quick profile unchanged on another corpus in the documented format.
OTHER_CORPORA = {"harbourline": "experiments/corpora/harbourline"}
RAGVSFT = str(Path(sys.executable).with_name("ragvsft"))  # the command of this environment, whatever PATH says


def profile_command(verb: str, name: str) -> list[str]:
    """`ragvsft VERB experiments/NAME.yaml`, or for another corpus the quick profile with `--corpus`."""
    if name in OTHER_CORPORA:
        return [verb, "experiments/quick.yaml", "--corpus", OTHER_CORPORA[name]]
    return [verb, f"experiments/{name}.yaml"]


def timed_command(verb: str, name: str) -> tuple[Path, float, float]:
    """`profile_command` from scratch into runs/bench-NAME (nothing reused); (folder, seconds, the longest stretch
    in seconds without a line of output, start and end included: what a workshop sees as a silent wait)."""
    out = REPO / "runs" / f"bench-{name}"
    shutil.rmtree(out, ignore_errors=True)
    command = [RAGVSFT, *profile_command(verb, name), "--out", str(out)]
    began = time.perf_counter()
    last, silence, after, line = began, 0.0, "(start)", "(start)"
    console = []  # each line with the seconds since the start: runs/bench-NAME.log, to find a silent stretch
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "240"}) as process:
        for text in process.stdout:  # type: ignore[union-attr]
            now = time.perf_counter()
            if now - last > silence:
                silence, after = now - last, line
            last, line = now, text.strip()[:160] or line  # COLUMNS: rich writes each log line whole, unwrapped
            console.append(f"{now - began:7.1f}  {text.rstrip()}")
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    ended = time.perf_counter()
    if ended - last > silence:
        silence, after = ended - last, line
    print(f"longest silence {silence:.1f} s, after: {after}", flush=True)
    atomic_write_text(out.with_suffix(".log"), "\n".join(console) + "\n")
    return out, ended - began, silence


def run_profile(profile: str) -> dict:
    out, seconds, silence = timed_command("run", profile)
    manifest = json.loads((out / "manifest.json").read_text())
    results = json.loads((out / "results.json").read_text())
    return {"profile": profile, "command": "ragvsft " + " ".join(profile_command("run", profile)), "wall_seconds": round(seconds, 1),
            "longest_silence_seconds": round(silence, 1), "bar_seconds": BARS.get(profile), "stage_seconds": manifest["timings"], "questions": results["run"]["questions"],
            "arms": len(results["arms"]), "facts": results["corpus"]["facts"],
            "training_examples": (results.get("training") or {}).get("examples"), "run_dir": str(out.relative_to(REPO)),
            "cpu": cpu_label(results), "date": time.strftime("%Y-%m-%d")}


def cpu_label(results: dict) -> str:
    """The CPU a run was measured on, as its results.json records it: model name, AMX or not, the precision used."""
    record = results.get("precision") or {}
    if not record.get("cpu"):
        return "not recorded"
    flags = record.get("flags") or []
    amx = "AMX" if "amx_bf16" in flags else "no AMX, AVX512-BF16" if "avx512_bf16" in flags else "no AMX"
    return f"{record['cpu']} ({amx}; {(record.get('chosen') or {}).get('models.dtype', '?')})"


def run_sweep_file(name: str) -> dict:
    """`ragvsft sweep experiments/<name>.yaml` from scratch in runs/bench-<name>, timed."""
    out, seconds, _ = timed_command("sweep", name)
    runs = sorted(p.parent for p in out.glob("*/manifest.json"))
    return {"command": "ragvsft " + " ".join(profile_command("sweep", name)), "wall_seconds": round(seconds, 1),
            "run_dir": str(out.relative_to(REPO)),
            "cpu": cpu_label(json.loads((runs[0] / "results.json").read_text())) if runs else "not recorded",
            "run_seconds": {r.name: json.loads((r / "manifest.json").read_text())["seconds"] for r in runs}}


def copy_of_quick_run(folder: str) -> tuple[Path, Path]:
    """(the benchmark's quick run folder, a fresh copy of it in runs/FOLDER) for reruns with one setting changed."""
    source, out = REPO / "runs" / "bench-quick", REPO / "runs" / folder
    if not (source / "results.json").is_file():
        sys.exit("run the quick profile first: experiments/benchmark.py --profile quick")
    shutil.rmtree(out, ignore_errors=True)  # a copy of an earlier quick run would recompute every stage
    shutil.copytree(source, out)
    return source, out


def rerun_check(folder: str, setting: str, labels: tuple[str, str]) -> dict:
    """Re-run the quick profile on a copy of its run folder with one `--set` changed: what the setting does not
    change is reused by the stage keys, the rest is computed again; verdicts, accuracies and speed compared, under
    `labels` (the benchmark run's, the rerun's)."""
    source, out = copy_of_quick_run(folder)
    command = [RAGVSFT, "run", "experiments/quick.yaml", "--out", str(out),
               "--set", setting]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    folders = dict(zip(labels, (source, out)))
    rows = {name: {(r["arm"], r["qid"]): r for r in map(json.loads, (f / "predictions.jsonl").read_text().splitlines())}
            for name, f in folders.items()}
    shared = rows[labels[0]].keys() & rows[labels[1]].keys()
    same = sum(rows[labels[0]][k]["verdict"] == rows[labels[1]][k]["verdict"] for k in shared)
    results = {name: json.loads((f / "results.json").read_text()) for name, f in folders.items()}
    arms = {arm: {name: {"heldout_accuracy": results[name]["arms"][arm]["heldout"]["accuracy"],
                         "seconds_per_query": results[name]["arms"][arm]["seconds_per_query"]} for name in results}
            for arm in results[labels[0]]["arms"]}
    retrained = "reader" not in json.loads((out / "manifest.json").read_text()).get("reused_stages", [])
    return {"answers": len(shared), "same_verdict": same, "arms": arms, "reader_retrained": retrained,
            "setting": setting}


def dtype_check() -> dict:
    """The quick profile's probe again in float32 on a copy of its bfloat16 run folder (index and adapter are
    shared, so only the generation dtype differs)."""
    return rerun_check("bench-quick-fp32", "models.dtype=float32", ("bfloat16", "float32"))


def prefix_check(questions: int = 24) -> dict:
    """The quick run's rag prompts (development questions under the worked-example block most of them share,
    context-aware at the run's weight) generated with the shared prefix held once (arms._shared_prefix_attention) and
    whole, in float32 and in bfloat16, and held once under half the batch limit: seconds, answers the same as generated
    whole, answers correct. What the reuse changes (nothing in float32) beside what the batch a question lands in
    changes in bfloat16."""
    from ragvsft.arms import generate, without_context
    from ragvsft.models import load_lm
    from ragvsft.score import matches_gold

    run = REPO / "runs" / "bench-quick"
    if not (run / "development.jsonl").is_file():
        sys.exit("run the quick profile first: experiments/benchmark.py --profile quick")
    config = json.loads((run / "results.json").read_text())["config"]
    rows = [r for r in map(json.loads, (run / "development.jsonl").read_text().splitlines())
            if r["arm"] == "rag" and r["gold"]]
    blocks = [json.dumps(r["messages"][:-1]) for r in rows]
    common = max(set(blocks), key=blocks.count)
    rows = [r for r, b in zip(rows, blocks) if b == common][:questions]
    conversations = [r["messages"] for r in rows]
    contrast = [without_context(c, r["question"]) for c, r in zip(conversations, rows)]
    probe = config["probe"]
    variants = [("whole", False, probe["batch_tokens"]), ("held once", True, probe["batch_tokens"]),
                ("held once, half the batch limit", True, probe["batch_tokens"] // 2)]
    out = {"questions": len(rows), "contrast": probe["rag_contrast"], "rows": []}
    for dtype in ("float32", "bfloat16"):
        model, tokenizer = load_lm(config["models"]["lm"], dtype)
        whole = None
        for name, reuse, limit in variants:
            began = time.perf_counter()
            answers = [g.answer for g in generate(model, tokenizer, conversations, probe["max_new_tokens"],
                                                  probe["batch_size"], reuse_prefix=reuse, batch_tokens=limit,
                                                  contrast=contrast, contrast_weight=probe["rag_contrast"])]
            seconds = time.perf_counter() - began
            whole = whole or answers
            out["rows"].append({"precision": dtype, "generation": name, "seconds": round(seconds, 1),
                                "same_as_whole": sum(a == b for a, b in zip(answers, whole)),
                                "correct": sum(matches_gold(a, r["gold"]) for a, r in zip(answers, rows))})
            print(json.dumps(out["rows"][-1]), flush=True)
    return out


def adapters_check() -> dict:
    """The quick profile's probe again with the adapters loaded by name onto one shared base instead of merged into a
    copy each (models.adapters): the CPU path is the faster of the two, measured here."""
    return rerun_check("bench-quick-named", "models.adapters=named", ("merged", "named"))


GATE_SIGNALS = (["grounding"], ["support"], ["grounding", "support"], ["retrieval", "margin"],
                ["retrieval", "margin", "rank"], ["support", "retrieval", "margin"],
                ["grounding", "support", "retrieval", "margin"])


def gate_check() -> dict:
    """The decline gate with each choice of `gate.signals`, on a copy of the quick run (only scoring runs again: the
    gate is fitted and thresholded there). Per gated arm: the development figures at the `gate.max_declined` budget
    (what the choice is made on) and the scored ones (measured, never used to choose)."""
    source, out = copy_of_quick_run("bench-quick-gate")
    rows = []
    for signals in GATE_SIGNALS:
        command = [RAGVSFT, "run", "experiments/quick.yaml", "--out", str(out),
                   "--set", f"gate.signals=[{','.join(signals)}]"]
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        results = json.loads((out / "results.json").read_text())
        limit = results["gate"]["max_declined"]
        for arm, figures in results["gate"]["arms"].items():
            points = [next(p for p in fold["table"] if p["declined_at_most"] == limit) for fold in figures["folds"]]
            scored = results["arms"][arm]
            rows.append({"signals": signals, "arm": arm, "max_declined": limit,
                         "development": {k: sum(p[k] for p in points) / len(points)
                                         for k in ("answerable_declined", "unanswerable_declined", "accuracy")},
                         "heldout_accuracy": scored["heldout"]["accuracy"],
                         "heldout_declined": scored["heldout"]["abstention_rate"],
                         "unanswerable_declined": scored["unanswerable"]["accuracy"]})
        print(json.dumps(rows[-len(results["gate"]["arms"]):]), flush=True)
    return {"rows": rows, "cpu": cpu_label(json.loads((source / "results.json").read_text()))}


CEILING_PROFILES = ("quick", "harbourline", "full")


def gate_ceiling() -> list[dict]:
    """How far the decline gate's signals could go on each profile's run that `--profile` left (runs/bench-NAME): per
    gated arm, the AUROC of its gate score for the scored answerable (held-out) questions against the unanswerable
    ones, and the share of unanswerable ones declined at the threshold the scored questions themselves would pick for
    the gate.max_declined budget (one threshold per cross-fitted fold, as the run's gate has, chosen together so that
    at most that share of answerable questions is declined over all folds). Those thresholds are chosen on what they
    are measured on, so no run may use them: they are a ceiling for any thresholds on these signals, beside what the
    run's gate (chosen on development questions) did. The AUROC pools the folds' scores."""
    from sklearn.metrics import roc_auc_score

    from ragvsft.corpus import load_corpus
    from ragvsft.gate import best_thresholds
    from ragvsft.reader import fold_of_question
    from ragvsft.score import verdict

    rows = []
    for profile in CEILING_PROFILES:
        run = REPO / "runs" / f"bench-{profile}"
        if not (run / "results.json").is_file():
            continue
        results = json.loads((run / "results.json").read_text())
        if not results.get("gate"):  # a run that gates no arm has no threshold to bound
            continue
        phrases = load_corpus(results["config"]["corpus"]).abstain_phrases
        budget, folds = results["gate"]["max_declined"], results["gate"]["fold_facts"]
        predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        for arm in results["gate"]["arms"]:
            # Each scored question: (its fold, its gate score, its verdict without the gate, answerable or not)
            judged = [(fold_of_question(r["qid"], r["fact_id"], folds), r["gate_score"],
                       verdict(r["ungated_answer"], r["gold"], phrases), r["set"] == "heldout")
                      for r in predictions if r["arm"] == arm and r["set"] in ("heldout", "unanswerable")]
            answerable_count = sum(a for *_, a in judged)
            spent, gained, right = best_thresholds(judged, len(folds), budget)
            scored = results["arms"][arm]
            rows.append({"profile": profile, "arm": arm, "budget": budget, "folds": len(folds),
                         "answerable": answerable_count, "unanswerable": len(judged) - answerable_count,
                         "auroc": round(float(roc_auc_score([a for *_, a in judged], [g for _, g, _, _ in judged])), 3),
                         "gate_unanswerable_declined": scored["unanswerable"]["accuracy"],
                         "gate_answerable_declined": scored["heldout"]["abstention_rate"],
                         "ceiling_unanswerable_declined": round(gained / (len(judged) - answerable_count), 4),
                         "ceiling_answerable_declined": round(spent / answerable_count, 4),
                         "ceiling_accuracy": round(right / answerable_count, 4),
                         "accuracy": scored["heldout"]["accuracy"],
                         "ungated_accuracy": round(sum(v == "correct" for _, _, v, a in judged if a) / answerable_count, 4),
                         "cpu": cpu_label(results)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def gate_choice(rows: list[dict]) -> list[str]:
    """The signals that decline the most unanswerable development questions, on average over the gated arms, within
    the budget (the fewest signals on a tie)."""
    by = {}
    for r in rows:
        by.setdefault(tuple(r["signals"]), []).append(r["development"]["unanswerable_declined"])
    return list(max(by, key=lambda s: (round(sum(by[s]) / len(by[s]), 4), -len(s))))


def training_speed(epochs: float = 2.0) -> dict:
    """Train the quick profile's LoRA adapter with each precision and batch size (no learning curve), and report
    seconds per example, tokens per second, the achieved share of the measured bfloat16 matmul peak, and the final
    loss, so that speed is never bought with learning."""
    import tempfile

    from ragvsft.config import load_config
    from ragvsft.corpus import load_corpus
    from ragvsft.finetune import build_finetune_set, encode_example, train_lora
    from ragvsft.models import load_lm

    cfg = load_config(REPO / "experiments" / "quick.yaml")
    sample = load_corpus(REPO / "corpus").subset(cfg.subset.facts, cfg.subset.unanswerable, cfg.seed)
    rows = build_finetune_set(sample)
    model, tokenizer = load_lm(cfg.models.lm, "float32")
    examples = [encode_example(r, tokenizer, cfg.finetune.max_length) for r in rows]
    tokens = sum(len(e["input_ids"]) for e in examples)
    answer_tokens = sum(sum(1 for x in e["labels"] if x != -100) for e in examples)
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    head = model.config.vocab_size * model.config.hidden_size
    # Forward and backward through a frozen base cost about 2 + 2 FLOPs per weight and token (no weight gradients);
    # the vocabulary projection is computed for answer tokens only.
    flops_per_epoch = 4 * body * tokens + 4 * head * answer_tokens
    # FLOP/s of a 2048x576 @ 576x1536 product (SmolLM2's MLP on a batch of tokens), timed as `auto` times it
    peak = {dtype: 1e9 * matmul_rate(dtype, (2048, 576, 1536), seconds=1.0) for dtype in ("bfloat16", "float32")}
    variants = []
    for precision, batch, first in (("float32", 16, 0), ("bfloat16", 16, 0), ("bfloat16", 32, 0), ("bfloat16", 16, 10)):
        ft = cfg.finetune.model_copy(update={"precision": precision, "batch_size": batch, "epochs": epochs,
                                             "curve_points": 0, "first_lora_layer": first})
        with tempfile.TemporaryDirectory() as tmp:
            figures = train_lora(model, tokenizer, rows, ft, cfg.seed, Path(tmp) / "adapter", work_dir=Path(tmp) / "work")
        achieved = flops_per_epoch * epochs / figures["seconds"]  # useful work: the same model, however it is trained
        variants.append({"precision": precision, "batch_size": batch, "first_lora_layer": first, "seconds_per_example": figures["seconds_per_example"],
                         "tokens_per_second": figures["tokens_per_second"], "final_loss": figures["loss"][-1][1],
                         "gflops": round(achieved / 1e9, 1), "share_of_bf16_peak": round(achieved / peak["bfloat16"], 3)})
        print(json.dumps(variants[-1]), flush=True)
    return {"examples": len(rows), "epochs": epochs, "tokens_per_example": round(tokens / len(rows), 1),
            "answer_tokens_per_example": round(answer_tokens / len(rows), 1),
            "matmul_peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()}, "variants": variants}


# The closed-book LoRA arm alone on the quick profile's facts; a setting is chosen on its seen (training) questions
# only: the one with the fewest epochs (then the lowest rank) that answers at least 90% of them. Held-out accuracy is shown, never used to choose.
SWEEP = [{"finetune.epochs": e, "finetune.learning_rate": lr, "finetune.lora_r": r}
         for e, lr, r in ((2, 0.003, 16), (3, 0.003, 16), (4, 0.003, 16), (4, 0.003, 8))]


def sweep() -> list[dict]:
    rows = []
    for setting in SWEEP:
        name = "-".join(f"{k.split('.')[-1]}{v:g}" for k, v in setting.items())
        out = REPO / "runs" / "sweep" / name
        shutil.rmtree(out, ignore_errors=True)
        command = [RAGVSFT, "run", "experiments/quick.yaml", "--out", str(out),
                   "--set", "probe.arms=[lora]", "--set", "probe.sets=[seen, heldout]", "--set", "finetune.curve_points=0"]
        command += [arg for k, v in setting.items() for arg in ("--set", f"{k}={v}")]
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = json.loads((out / "results.json").read_text())
        lora = results["arms"]["lora"]
        rows.append({**setting, "seen": lora["seen"]["accuracy"], "heldout": lora["heldout"]["accuracy"],
                     "style": lora["style_adherence"], "final_loss": results["training"]["loss"][-1][1],
                     "training_seconds": results["training"]["seconds"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# The RAFT reader's share of abstention targets, tried on experiments/quick.yaml with the rag and raft arms. Measured
# on training questions only: the sample's seen (train) questions, which the cross-fitted reader never trained on
# (accuracy, over-abstention), and the same questions with a context that does not name the answer (abstention where
# it should decline). The rule, fixed before looking: over-abstention on seen questions at most 30% (the issue's
# bound), then the most abstention on silent contexts, then the highest seen accuracy. Held-out figures are shown,
# never used to choose.
READER_SWEEP = [*({"reader.abstain_by": "reader", "reader.abstain_share": share} for share in (0.1, 0.2, 0.3)),
                {"reader.abstain_by": "head", "reader.abstain_share": 0.0}]


def reader_choice(rows: list[dict]) -> dict:
    fit = [r for r in rows if r["seen_abstained"] <= 0.3] or rows
    return max(fit, key=lambda r: (r["silent_abstained"], r["seen"]))


def reader_sweep() -> list[dict]:
    rows = []
    for i, setting in enumerate(READER_SWEEP):
        out = REPO / "runs" / "reader-sweep" / str(i)  # kept between calls: an unchanged setting reuses its stages
        command = [RAGVSFT, "run", "experiments/quick.yaml", "--out", str(out),
                   "--set", "probe.arms=[rag, raft]"]
        command += [arg for k, v in setting.items() for arg in ("--set", f"{k}={'null' if v is None else v}")]
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = json.loads((out / "results.json").read_text())
        raft, rag = results["arms"]["raft"], results["arms"]["rag"]
        rows.append({**setting, "examples": results["reader"]["examples"][0], "seen": raft["seen"]["accuracy"],
                     "seen_abstained": raft["seen"]["abstention_rate"], "heldout": raft["heldout"]["accuracy"],
                     "silent_abstained": results["reader"]["silent_abstained"],
                     "heldout_abstained": raft["heldout"]["abstention_rate"],
                     "unanswerable_abstained": raft["unanswerable"]["accuracy"], "style": raft["style_adherence"],
                     "rag_seen": rag["seen"]["accuracy"], "rag_heldout": rag["heldout"]["accuracy"],
                     "training_seconds": results["reader"]["seconds"]
                     + sum(h["seconds"] for h in results["reader"].get("head") or [])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


SMALL_CORPUS = {"facts": 31, "questions_per_fact": 2}  # issue 19's small corpus: 31 facts, 2 train questions each


def small_corpus_check() -> list[dict]:
    """The closed-book LoRA on a small corpus, as a new user would try it: the quick profile on the second corpus,
    cut to 31 facts with 2 train questions each, with `finetune.min_steps` as shipped and at 0 (the fine-tune before
    the rule): its seen accuracy (training questions asked back), why training stopped, and what it cost."""
    rows = []
    for min_steps in (None, 0):
        out = REPO / "runs" / f"small-corpus-{'default' if min_steps is None else min_steps}"
        shutil.rmtree(out, ignore_errors=True)
        command = [RAGVSFT, *profile_command("run", "harbourline"),
                   "--out", str(out), "--set", f"subset.facts={SMALL_CORPUS['facts']}",
                   "--set", f"finetune.questions_per_fact={SMALL_CORPUS['questions_per_fact']}",
                   "--set", "probe.arms=[lora]", "--set", "probe.sets=[seen,heldout]",
                   *(["--set", f"finetune.min_steps={min_steps}"] if min_steps is not None else [])]
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = json.loads((out / "results.json").read_text())
        training, lora = results["training"], results["arms"]["lora"]
        rows.append({"min_steps": results["config"]["finetune"]["min_steps"], "facts": results["corpus"]["facts"],
                     "examples": training["examples"], "steps": training["steps"], "epochs": training["epochs"],
                     "stopped": training["stopped"], "learnt_share": training.get("learnt_share"),
                     "seen": lora["seen"]["accuracy"], "seen_n": lora["seen"]["n"], "heldout": lora["heldout"]["accuracy"],
                     "training_seconds": training["seconds"], "cpu": cpu_label(results), "run_dir": str(out.relative_to(REPO))})
        print(json.dumps(rows[-1]), flush=True)
    return rows


CONTEXT_UNITS = (1, 2, 3)  # index.context_units: the best n sentences or table rows of the top-k chunks


DEMO_COUNTS = (0, 1, 2, 3, 4, 5)
CONTRAST_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
RAFT_CONTRAST_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)
PLAUSIBILITY = (0.0, 0.05, 0.1, 0.2, 0.3)
UNIT_QUESTION_WEIGHTS = (0.0, 0.5, 1.0, 2.0)


def development_sweep(setting: str, values, arm: str = "rag", section: str = "probe") -> list[dict]:
    """One gated arm (rag, raft) per value of one setting of `section` (probe.rag_demos, index.unit_questions) on the
    quick profile's development questions (facts it does not score, and unanswerable questions it does not ask: what
    its gate calibrates on); the probe asks only the train questions back, so no scored question's answer is seen.
    The chunks retrieved (and the RAFT reader) are the run's own and the same for every value; each row keeps the
    setting under its own name."""
    from ragvsft.corpus import load_corpus
    from ragvsft.score import follows_style

    markers = list(load_corpus(REPO / "corpus").style.markers)
    rows, out = [], REPO / "runs" / f"{setting.replace('_', '-')}-sweep"  # one folder: embedder, index computed once
    for value in values:
        command = [RAGVSFT, "run", "experiments/quick.yaml", "--out", str(out),
                   "--set", f"probe.arms=[{arm}]", "--set", "probe.sets=[seen]", "--set", f"{section}.{setting}={value}"]
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        developed = [json.loads(line) for line in (out / "development.jsonl").read_text().splitlines()]
        answerable = [r for r in developed if r["gold"]]
        shown = [r for r in answerable if r["answer_shown"]]
        unanswerable = [r for r in developed if not r["gold"]]
        rows.append({setting: value, "questions": len(answerable), "unanswerable": len(unanswerable),
                     "accuracy": sum(r["verdict"] == "correct" for r in answerable) / len(answerable),
                     "answer_shown": len(shown) / len(answerable),
                     "right_when_shown": sum(r["verdict"] == "correct" for r in shown) / max(1, len(shown)),
                     "unanswerable_declined": sum(r["verdict"] == "abstained" for r in unanswerable) / max(1, len(unanswerable)),
                     "style": sum(follows_style(r["answer"], markers) for r in developed) / len(developed),
                     "prompt_tokens": sum(r["prompt_tokens"] for r in developed) / len(developed),
                     "seconds": round(sum(r["seconds"] for r in developed), 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


# (index.tune_negatives, index.tune_epochs, training precision): old default first
NEGATIVE_VARIANTS = [(False, 2, "float32"), (True, 1, "float32"), (True, 2, "float32"), (True, 1, "bfloat16")]


def negatives_check(development_count: int = 60) -> dict:
    """Embedder tuning with and without hard negatives, measured on development data the way the scored facts meet it:
    the quick sample's train questions and those of `development_count` facts the quick run does not score tune a fresh
    embedder; what counts is how often the unit shown for those facts' probe questions names the answer (their train
    questions tuned it, as the scored facts' do before they are probed). No scored fact's probe question is asked."""
    import dataclasses
    import random

    import numpy as np

    from ragvsft.corpus import load_corpus
    from ragvsft.embedder import hard_negatives, tune_encoder, tuning_pairs
    from ragvsft.index import Index, chunk_corpus, unit_choices
    from ragvsft.models import load_encoder
    from ragvsft.probe import development_facts
    from ragvsft.score import names_answer

    cfg = load_config(REPO / "experiments" / "quick.yaml")
    corpus = load_corpus(REPO / cfg.corpus)
    sample = cfg.sample_of(corpus)
    development = sorted(random.Random(cfg.seed).sample(list(development_facts(corpus, sample)), development_count),
                         key=lambda f: f.id)
    tuned_on = dataclasses.replace(sample, facts=(*sample.facts, *development))
    asked = [(q, f.gold) for f in development for q in f.probe_questions]
    encoder = load_encoder(cfg.models.embedder)  # its tokenizer cuts the chunks; tuning never changes that
    chunks = chunk_corpus(corpus, encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap, cfg.index.chunking)
    pairs, _ = tuning_pairs(tuned_on, chunks, cfg.index.tune_units, cfg.index.headed)
    rows = []
    for negatives, epochs, precision in NEGATIVE_VARIANTS:
        encoder = load_encoder(cfg.models.embedder)  # each variant tunes a fresh copy
        began = time.perf_counter()
        trained = (hard_negatives(pairs, Index(chunks, encoder.encode([c.text for c in chunks])), encoder,
                                  cfg.index.k, cfg.index.headed) if negatives else pairs)
        training = tune_encoder(encoder, trained, epochs, cfg.index.tune_learning_rate, cfg.index.tune_batch_size,
                                cfg.seed, precision=precision)
        seconds = time.perf_counter() - began
        index = Index(chunks, encoder.encode([c.text for c in chunks]))
        texts = [q for q, _ in asked]
        shown = unit_choices(encoder, texts, index.search(encoder, texts, cfg.index.k), cfg.index.headed)
        named = {name: float(np.mean([names_answer(t, list(gold), q) for t, (q, gold) in zip(shown[name], asked)]))
                 for name in ("best unit", "best two units", "whole chunks")}
        rows.append({"tune_negatives": negatives, "tune_epochs": epochs, "precision": precision, "pairs": len(pairs),
                     "steps": training["steps"],
                     "seconds": round(seconds, 1), "questions": len(asked), **named})
        print(json.dumps(rows[-1]), flush=True)
    return {"development_facts": development_count, "variants": rows}


def layers(variant: dict) -> str:
    first = variant.get("first_lora_layer", 0)
    return f"{first} and up" if first else "all"


def readme_section(bench: dict, command: str = ".venv/bin/python experiments/benchmark.py --readme") -> str:
    machine = bench["machine"]
    # every command that measured a figure of this file, in order (a later --dtype-check adds to a --profile run)
    commands = " and ".join(f"`{c}`" for c in bench.get("commands") or [command])
    lines = [START, "", f"Measured on {machine['cpus']} CPU cores ({machine.get('cpu', machine['processor'])}, "
             f"{machine['platform']}), {bench['date']}, with {commands} (each row names the CPU it ran on):", "",
             "| profile | CPU (precision) | measured | facts | questions × arms | training examples | wall time | bar | index "
             "| fine-tune | RAFT reader | probe | longest silence | s per training example | training tokens/s "
             "| LoRA seen accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in bench["profiles"].values():
        s = p["stage_seconds"]
        results = json.loads((REPO / p["run_dir"] / "results.json").read_text())
        training, seen = results.get("training") or {}, results["arms"].get("lora", {}).get("seen", {})
        reader = f"{s['reader']:.0f} s" if "reader" in s else "–"
        bar = f"{p['bar_seconds'] / 60:.0f} min" if p["bar_seconds"] else "–"
        silence = f"{p['longest_silence_seconds']:.0f} s" if "longest_silence_seconds" in p else "not recorded"
        lines.append(f"| `{p['command']}` | {p.get('cpu', 'not recorded')} | {p.get('date', bench['date'])} | {p['facts']} | "
                     f"{p['questions']} × {p['arms']} | {p['training_examples']} | "
                     f"{p['wall_seconds'] / 60:.1f} min | {bar} | {s.get('index', 0):.0f} s | "
                     f"{s.get('finetune', 0):.0f} s | {reader} | "
                     f"{s.get('probe', 0):.0f} s | {silence} | "
                     f"{training.get('seconds_per_example', float('nan')):.3f} | {training.get('tokens_per_second', 0):.0f} | "
                     f"{100 * seen.get('accuracy', float('nan')):.0f}% |")
    lines += ["", "(s per training example and tokens/s: results.json `training`, the run's own LoRA training, learning "
                  "curve excluded. Longest silence: the longest stretch of the run's output without a new line, start "
                  "and end included.)"]
    floors = [(p, json.loads((REPO / p["run_dir"] / "results.json").read_text()).get("performance"))
              for p in bench["profiles"].values()]
    floors = [(p, perf) for p, perf in floors if perf and perf.get("peak_gflops")]
    if floors:
        lines += ["", "The compute floor (results.json `performance`): per stage the tokens through the model (the probe's "
                      "prompt tokens less those each arm's shared prefix reused from its cache), the work "
                      "at 2 × parameters per forward token and 6 × per trained token, and the share of the matmul peak "
                      "measured at start-up for the precision used (`precision.py`) that the stage achieved. The work is an "
                      "upper estimate for training: LoRA from a first layer (`first_lora_layer`) stops the backward pass "
                      "there, so a share above 100% means less work than 6 × parameters per token, not a faster machine:", "",
                  "| profile | CPU | peak GFLOP/s | stage | forward tokens | trained tokens | GFLOP | seconds | floor s | share of peak |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for p, perf in floors:
            for stage, f in perf["stages"].items():
                share = f"{100 * f['share_of_peak']:.0f}%" if f["share_of_peak"] is not None else "–"
                lines.append(f"| {p['profile']} | {p.get('cpu', '')} | {perf['peak_gflops']:.0f} | {stage} | "
                             f"{f['forward_tokens']:,} | {f['trained_tokens']:,} | {f['gflop']:,.0f} | "
                             f"{f['seconds'] or 0:.0f} | {f['floor_seconds'] or 0:.0f} | {share} |")
    check = bench.get("dtype_check")
    if check:
        speedups = [a["float32"]["seconds_per_query"] / a["bfloat16"]["seconds_per_query"] for a in check["arms"].values()]
        gaps = [abs(a["float32"]["heldout_accuracy"] - a["bfloat16"]["heldout_accuracy"]) for a in check["arms"].values()]
        widest, apart = max(check["arms"].items(), key=lambda item: abs(item[1]["float32"]["heldout_accuracy"]
                                                                       - item[1]["bfloat16"]["heldout_accuracy"]))
        # A reader that declines by its head is trained again (the head reads states in the generation dtype).
        reader = ("and the RAFT reader trained again, its answerability head on states in that dtype"
                  if check.get("reader_retrained", True) else "the same RAFT reader")
        lines += ["", f"bfloat16 against float32 on the quick run (`--dtype-check`: same index and closed-book adapter; "
                      f"generation in the other dtype, {reader}): the same verdict on {check['same_verdict']} of {check['answers']} answers, "
                      f"held-out accuracy per arm at most {100 * max(gaps):.1f} points apart ({label(widest)}: "
                      f"{100 * apart['bfloat16']['heldout_accuracy']:.1f}% in bfloat16, "
                      f"{100 * apart['float32']['heldout_accuracy']:.1f}% in float32), generation "
                      f"{min(speedups):.1f}–{max(speedups):.1f}× faster in bfloat16."]
    check = bench.get("prefix_check")
    if check:
        lines += ["", f"The prefix every prompt shares, held once for the batch against each prompt generated whole "
                      f"(`--prefix`: {check['questions']} of the quick run's rag development prompts under one block of "
                      f"worked examples, context-aware at w = {check['contrast']:g}; in float32 both ways compute the same "
                      "numbers, in bfloat16 they round differently):", "",
                  "| precision | generation | seconds | answers as generated whole | correct |", "|---|---|---|---|---|"]
        lines += [f"| {r['precision']} | {r['generation']} | {r['seconds']:.1f} | {r['same_as_whole']} of "
                  f"{check['questions']} | {r['correct']} |" for r in check["rows"]]
    check = bench.get("adapters_check")
    if check:
        arms = {a: f for a, f in check["arms"].items() if model_of(a) != "base"}  # arms on the base hold no adapter
        slower = [f["named"]["seconds_per_query"] / f["merged"]["seconds_per_query"] for f in arms.values()]
        gaps = [abs(f["named"]["heldout_accuracy"] - f["merged"]["heldout_accuracy"]) for f in arms.values()]
        lines += ["", f"Adapters merged into a copy of the base each, against loaded by name onto one shared base "
                      f"(`--adapters`, the quick run's probe with `models.adapters=named`): the same verdict on "
                      f"{check['same_verdict']} of {check['answers']} answers, held-out accuracy per arm at most "
                      f"{100 * max(gaps):.1f} points apart; the arms with an adapter took {min(slower):.1f}–"
                      f"{max(slower):.1f}× the seconds per query named, so `auto` merges on the CPU."]
    check = bench.get("negatives")
    if check:
        lines += ["", f"Embedder tuning with hard negatives (`--negatives`; chosen on development data: the quick sample's "
                      f"train questions and those of {check['development_facts']} facts the quick run does not score tune a "
                      f"fresh MiniLM, and the share of those facts' {check['variants'][0]['questions']} probe questions "
                      "whose shown text names the answer is measured; no scored question is asked):", "",
                  "| hard negatives | epochs | precision | best unit names the answer | best two units | top-3 chunks whole "
                  "| tuning s |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {'yes' if v['tune_negatives'] else 'no'} | {v['tune_epochs']} | {v.get('precision', 'float32')} | "
                  f"{100 * v['best unit']:.1f}% | "
                  f"{100 * v['best two units']:.1f}% | {100 * v['whole chunks']:.1f}% | {v['seconds']:.0f} |"
                  for v in check["variants"]]
        index = load_config(None).index
        lines += ["", f"The defaults: `index.tune_negatives: {str(index.tune_negatives).lower()}`, "
                      f"`index.tune_epochs: {index.tune_epochs}`."]
    speed = bench.get("training_speed")
    if speed:
        lines += ["", f"LoRA training speed on the quick profile's {speed['examples']} examples ({speed['epochs']:g} epochs, "
                      f"{speed['tokens_per_example']:.0f} tokens per example of which {speed['answer_tokens_per_example']:.0f} "
                      f"answer tokens; `--training`; measured matmul peak {speed['matmul_peak_gflops']['bfloat16']:.0f} "
                      f"GFLOP/s in bfloat16, {speed['matmul_peak_gflops']['float32']:.0f} in float32; GFLOP/s counts the work of "
                      f"training every layer, so for \"10 and up\" it is the rate of the work replaced, not of work done):", "",
                  "| frozen base | batch | LoRA layers | s per example | tokens/s | GFLOP/s | share of bf16 peak | final loss |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v['precision']} | {v['batch_size']} | {layers(v)} | {v['seconds_per_example']:.3f} | "
                  f"{v['tokens_per_second']:.0f} | "
                  f"{v['gflops']:.0f} | {100 * v['share_of_bf16_peak']:.0f}% | {v['final_loss']:.3f} |" for v in speed["variants"]]
    if bench.get("sweep"):
        fit = [r for r in bench["sweep"] if r["seen"] >= 0.9]
        chosen = min(fit, key=lambda r: (r["finetune.epochs"], r["finetune.lora_r"])) if fit else None
        lines += ["", "Fine-tuning sweep on the quick profile's 40 facts (`--sweep`; LoRA arm alone; a setting is judged on "
                      "the seen questions only, held-out accuracy is shown but never used to choose):", "",
                  "| epochs | learning rate | LoRA rank | seen accuracy | held-out accuracy | house style | final loss | training s |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['finetune.epochs']:g} | {r['finetune.learning_rate']:g} | {r['finetune.lora_r']} | "
                  f"{100 * r['seen']:.0f}% | {100 * r['heldout']:.0f}% | {100 * r['style']:.0f}% | {r['final_loss']:.3f} | "
                  f"{r['training_seconds']:.0f} |" for r in bench["sweep"]]
        if chosen:
            lines += ["", f"Fewest epochs (then lowest rank) with at least 90% seen accuracy: {chosen['finetune.epochs']:g} epochs at "
                          f"{chosen['finetune.learning_rate']:g}, rank {chosen['finetune.lora_r']}."]
    if bench.get("context"):  # as measured before 2026-12-07, on train questions (a section of that time keeps it)
        rows = bench["context"]
        best = max(rows, key=lambda r: r["accuracy"])
        lines += ["", f"How much retrieved text the base model can use (`--context`; the rag arm on the train question of "
                      f"each of the corpus's {rows[0]['questions']} facts, embedder untuned; probe questions never asked):", "",
                  "| context shown | the answer is in it | RAG accuracy | right when the answer is shown | prompt tokens "
                  "| s/query |", "|---|---|---|---|---|---|"]
        for r in rows:
            shown = "top-3 chunks whole" if r["context_units"] is None else f"best {r['context_units']} sentence(s) or row(s)"
            lines.append(f"| {shown} | {100 * r['answer_shown']:.0f}% | {100 * r['accuracy']:.0f}% | "
                         f"{100 * r['right_when_shown']:.0f}% | {r['prompt_tokens']:.0f} | {r['seconds_per_query']:.2f} |")
        default = load_config(None).index.context_units
        lines += ["", f"Highest RAG accuracy on these training questions: context_units {best['context_units']}; the "
                      f"default `index.context_units` is {default}."]
    for name, flag, setting, what, column, arm, section in (
            ("context_units", "context", "context_units", "How much of the retrieved text the rag arm is shown: the "
             "best n sentences or table rows of the top-k chunks", "units shown", "RAG", "index"),
            ("unit_questions", "unit-questions", "unit_questions", "The unit shown chosen with the train questions "
             "whose answer it names, by their weight (0: its cosine alone)", "weight", "RAG", "index"),
            ("demos", "demos", "rag_demos", "Worked reading examples in the rag prompt", "worked examples", "RAG", "probe"),
            ("contrast", "contrast", "rag_contrast", "Context-aware decoding of the rag arm, by its weight w", "weight w",
             "RAG", "probe"),
            ("raft_contrast", "raft-contrast", "raft_contrast", "Context-aware decoding of the RAFT reader, by its weight "
             "w", "weight w", "RAFT", "probe"),
            ("plausibility", "plausibility", "contrast_plausibility", "The plausibility constraint of the rag arm's "
             "context-aware decoding, by its alpha", "alpha", "RAG", "probe"),
            ("raft_plausibility", "plausibility", "contrast_plausibility", "The same constraint for the RAFT reader",
             "alpha", "RAFT", "probe")):
        if not bench.get(name):
            continue
        rows = bench[name]
        best = max(rows, key=lambda r: (round(r["accuracy"], 4), -r[setting]))
        lines += ["", f"{what} (`--{flag}`; the quick profile's {rows[0]['questions']} answerable and "
                      f"{rows[0]['unanswerable']} unanswerable development questions, of facts and questions it does "
                      "not score; the run's own retrieval):", "",
                  f"| {column} | {arm} accuracy | unit shown names the answer | right when it does | unanswerable "
                  "declined | house style | prompt tokens | generation s |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r[setting]} | {100 * r['accuracy']:.1f}% | {100 * r['answer_shown']:.0f}% | "
                  f"{100 * r['right_when_shown']:.0f}% | {100 * r['unanswerable_declined']:.0f}% | {100 * r['style']:.0f}% | "
                  f"{r['prompt_tokens']:.0f} | {r['seconds']:.0f} |" for r in rows]
        lines += ["", f"Highest development accuracy (the smallest on a tie): {best[setting]}; the default "
                      f"`{section}.{setting}` is {getattr(getattr(load_config(None), section), setting)}."]
    if bench.get("gate"):
        rows, chosen = bench["gate"]["rows"], gate_choice(bench["gate"]["rows"])
        lines += ["", f"The decline gate by its signals (`--gate`: the quick run scored again with each `gate.signals`; "
                      f"{bench['gate']['cpu']}). Chosen on development questions: the most unanswerable ones declined "
                      f"within the budget of {100 * rows[0]['max_declined']:.0f}% of the answerable ones, on average over "
                      "the gated arms. The scored figures are measured, never used to choose:", "",
                  "| signals | arm | dev: answerable declined | dev: unanswerable declined | dev: accuracy | held-out "
                  "accuracy | held-out declined | unanswerable declined |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {' + '.join(r['signals'])} | {r['arm']} | {100 * r['development']['answerable_declined']:.0f}% | "
                  f"{100 * r['development']['unanswerable_declined']:.0f}% | {100 * r['development']['accuracy']:.1f}% | "
                  f"{100 * r['heldout_accuracy']:.1f}% | {100 * r['heldout_declined']:.1f}% | "
                  f"{100 * r['unanswerable_declined']:.0f}% |" for r in rows]
        lines += ["", f"Chosen by the rule: {' + '.join(chosen)}; the default `gate.signals` is "
                      f"{' + '.join(load_config(None).gate.signals)}."]
    if bench.get("gate_ceiling"):
        rows = bench["gate_ceiling"]
        lines += ["", f"How far any threshold on the gate's signals could go (`--gate-ceiling`, on the profile runs above; "
                      f"{rows[0]['cpu']}): the AUROC of the gate score for the scored answerable (held-out) questions "
                      "against the unanswerable ones, and the most unanswerable questions that thresholds picked on the "
                      "scored questions themselves decline (one per cross-fitted fold, as the run's gate has) while at "
                      f"most {100 * rows[0]['budget']:.0f}% of the answerable ones are declined, then the most answered "
                      "right. Those thresholds are chosen on what they are measured on, so no run uses them: they are a "
                      "ceiling, beside what the run's gate, chosen on development questions, did:", "",
                  "| profile | arm | scored questions (answerable, unanswerable) | gate AUROC on them | ceiling: "
                  "unanswerable declined | answerable declined | held-out accuracy | run: unanswerable declined | "
                  "answerable declined | held-out accuracy | without the gate: held-out accuracy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['profile']} | {r['arm']} | {r['answerable']}, {r['unanswerable']} | {r['auroc']:.3f} | "
                  f"{100 * r['ceiling_unanswerable_declined']:.0f}% | {100 * r['ceiling_answerable_declined']:.1f}% | "
                  f"{100 * r['ceiling_accuracy']:.1f}% | {100 * r['gate_unanswerable_declined']:.0f}% | "
                  f"{100 * r['gate_answerable_declined']:.1f}% | {100 * r['accuracy']:.1f}% | "
                  f"{100 * r['ungated_accuracy']:.1f}% |" for r in rows]
    if bench.get("small_corpus"):
        rows = bench["small_corpus"]
        lines += ["", f"The closed-book LoRA on a small corpus (`--small-corpus`: the second corpus cut to "
                      f"{rows[0]['facts']} facts with {SMALL_CORPUS['questions_per_fact']} train questions each, LoRA arm "
                      f"alone; {rows[0]['cpu']}). Seen: the training questions asked back; held-out shown, never used to "
                      "choose:", "",
                  "| `finetune.min_steps` | training examples | optimizer steps | epochs | stopped by | training answers "
                  "reproduced | seen accuracy | held-out accuracy | training s |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['min_steps']} | {r['examples']} | {r['steps']} | {r['epochs']:g} | {r['stopped']} | "
                  f"{100 * (r['learnt_share'] or 0):.0f}% | {100 * r['seen']:.0f}% ({r['seen_n']}) | "
                  f"{100 * r['heldout']:.0f}% | {r['training_seconds']:.0f} |" for r in rows]
    if bench.get("reader_sweep"):
        rows = bench["reader_sweep"]
        chosen = reader_choice(rows)
        lines += ["", "RAFT reader: who declines (the reader's own generation, taught by a share of abstention targets "
                      "in its training set, or an answerability head on its hidden state) (`--reader-sweep` on the quick "
                      "profile, rag and raft arms). Chosen on training questions only: over-abstention on the seen "
                      "questions (which the cross-fitted reader never trained on) at most 30%, then the most abstention "
                      "when the context shown is silent (the same questions, shown only text that does not name the "
                      "answer), then seen accuracy. Held-out and unanswerable figures are shown, never used to choose:", "",
                  "| declines by | abstain share | examples | seen (RAG) | seen abstained | silent context abstained "
                  "| held-out (RAG) | held-out abstained | unanswerable abstained | house style | training s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r.get('reader.abstain_by', 'reader')} | {r['reader.abstain_share']:g} | {r['examples']} | {100 * r['seen']:.0f}% ({100 * r['rag_seen']:.0f}%) | "
                  f"{100 * r['seen_abstained']:.0f}% | {100 * r['silent_abstained']:.0f}% | "
                  f"{100 * r['heldout']:.0f}% ({100 * r['rag_heldout']:.0f}%) | "
                  f"{100 * r['heldout_abstained']:.0f}% | {100 * r['unanswerable_abstained']:.0f}% | "
                  f"{100 * r['style']:.0f}% | {r['training_seconds']:.0f} |" for r in rows]
        defaults = load_config(None).reader
        lines += ["", f"Chosen by the rule: declines by {chosen.get('reader.abstain_by', 'reader')}, abstain share "
                      f"{chosen['reader.abstain_share']:g}; the defaults are `reader.abstain_by: {defaults.abstain_by}`, "
                      f"`reader.abstain_share: {defaults.abstain_share:g}`."]
    for name, p in bench["profiles"].items():
        results = json.loads((REPO / p["run_dir"] / "results.json").read_text())
        lines += ["", f"The {name} profile's comparison table, as measured (`{p['run_dir']}/report.md`):", "",
                  markdown_table(results), ""]
        lines += [f"- {sentence}" for sentence in findings(results)]
        updates = update_rows(results)
        if updates:
            lines += ["", f"The knowledge update in `{p['run_dir']}` (`update` in its results.json; seconds on this machine):", "",
                      "| " + " | ".join(updates[0]) + " |", "|" + "---|" * len(updates[0])]
            lines += ["| " + " | ".join(row.values()) + " |" for row in updates]
            lines += ["", f"The claims ledger as decided by `{p['run_dir']}` (every claim with the figures its rule "
                          "read; `src/ragvsft/claims.yaml`):", "", "| claim | source | measured | verdict |", "|---|---|---|---|"]
            lines += [f"| {cell(c['claim'])} | `{c['source']}` | {cell(c['figures'] or c['reason'])} | {c['verdict']} |"
                      for c in evaluate_claims(results)]
    lines += ["", END]
    return "\n".join(lines)


def sweep_block(bench: dict, name: str) -> list[str]:
    """One sweep's comparison.md as its run wrote it, with the command, wall time and CPU."""
    sweep = bench["sweeps"][name]
    table = (REPO / sweep["run_dir"] / "comparison.md").read_text(encoding="utf-8").strip()
    runs = "; ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in (sweep.get("run_seconds") or {}).items())
    return [f"`{sweep['command']}` ({sweep['wall_seconds'] / 60:.1f} min on {bench['machine']['cpus']} cores, "
            f"{sweep.get('cpu') or bench['machine']['cpu']}, {bench['date']}{': ' + runs if runs else ''}; "
            f"`{sweep['run_dir']}/comparison.md`, also as .csv, .tex and .png):", "", table, ""]


def sweeps_section(bench: dict, names: list[str]) -> str:
    """README "Sweeps": each of `names`' comparison.md as its run wrote it, with the command and wall time."""
    return "\n".join([SWEEPS_START, "", *(line for name in names for line in sweep_block(bench, name)), SWEEPS_END])


def own_marker(name: str) -> tuple[str, str]:
    """A sweep with its own README block (measured on another machine or day than the others keeps them intact)."""
    return f"<!-- sweep-{name}:start -->", f"<!-- sweep-{name}:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", action="append", choices=PROFILES, help="profile(s) to time (default quick and full)")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's benchmark section")
    parser.add_argument("--section", default="", help="a machine's own section: runs/benchmark-NAME.json and README "
                        "markers <!-- benchmark-NAME:start/end --> (e.g. noamx), beside the main one")
    parser.add_argument("--dtype-check", action="store_true", help="compare bfloat16 with float32 on the quick run")
    parser.add_argument("--adapters", action="store_true", help="merged adapters against named ones on the quick run")
    parser.add_argument("--prefix", action="store_true", help="the shared prefix held once against whole prompts")
    parser.add_argument("--negatives", action="store_true", help="embedder tuning with and without hard negatives")
    parser.add_argument("--training", action="store_true", help="time LoRA training: precision x batch size")
    parser.add_argument("--sweep", action="store_true", help="epochs x learning rate x rank on the quick facts")
    parser.add_argument("--context", action="store_true", help="RAG accuracy per index.context_units on development "
                        "questions")
    parser.add_argument("--unit-questions", action="store_true", help="RAG accuracy per index.unit_questions on "
                        "development questions")
    parser.add_argument("--demos", action="store_true", help="RAG accuracy per probe.rag_demos on development questions")
    parser.add_argument("--contrast", action="store_true", help="RAG accuracy per probe.rag_contrast (context-aware "
                        "decoding) on development questions")
    parser.add_argument("--gate", action="store_true", help="the decline gate per gate.signals on the quick run")
    parser.add_argument("--gate-ceiling", action="store_true", help="how far any threshold on the gate's signals "
                        "could go on the profile runs left in runs/bench-*")
    parser.add_argument("--raft-contrast", action="store_true", help="RAFT accuracy per probe.raft_contrast on "
                        "development questions")
    parser.add_argument("--plausibility", action="store_true", help="RAG and RAFT accuracy per "
                        "probe.contrast_plausibility on development questions")
    parser.add_argument("--reader-sweep", action="store_true", help="RAFT reader settings on the quick profile")
    parser.add_argument("--small-corpus", action="store_true", help="the closed-book LoRA's seen accuracy on a small "
                        "corpus (31 facts, 2 train questions each), with and without finetune.min_steps")
    parser.add_argument("--sweeps", action="append", choices=["paraphrases", "seeds", "models"],
                        help="time `ragvsft sweep experiments/NAME.yaml` for the README's Sweeps section")
    args = parser.parse_args()
    suffix = f"-{args.section}" if args.section else ""
    start, end = f"<!-- benchmark{suffix}:start -->", f"<!-- benchmark{suffix}:end -->"
    path = REPO / "runs" / f"benchmark{suffix}.json"
    bench = json.loads(path.read_text()) if path.is_file() else {"profiles": {}}
    if args.negatives:
        print("tuning the embedder with and without hard negatives ...", flush=True)
        bench["negatives"] = negatives_check()
    if args.training:
        print("timing LoRA training ...", flush=True)
        bench["training_speed"] = training_speed()
    if args.sweep:
        print("sweeping the fine-tuning settings ...", flush=True)
        bench["sweep"] = sweep()
    if args.context:
        print("measuring how much retrieved text the rag arm is shown ...", flush=True)
        bench["context_units"] = development_sweep("context_units", CONTEXT_UNITS, section="index")
    if args.unit_questions:
        print("measuring the unit choice with the train questions attached ...", flush=True)
        bench["unit_questions"] = development_sweep("unit_questions", UNIT_QUESTION_WEIGHTS, section="index")
    if args.demos:
        print("measuring the rag arm's worked reading examples ...", flush=True)
        bench["demos"] = development_sweep("rag_demos", DEMO_COUNTS)
    if args.contrast:
        print("measuring the rag arm's context-aware decoding ...", flush=True)
        bench["contrast"] = development_sweep("rag_contrast", CONTRAST_WEIGHTS)
    if args.raft_contrast:
        print("measuring the RAFT reader's context-aware decoding ...", flush=True)
        bench["raft_contrast"] = development_sweep("raft_contrast", RAFT_CONTRAST_WEIGHTS, arm="raft")
    if args.plausibility:
        print("measuring the plausibility constraint of context-aware decoding ...", flush=True)
        bench["plausibility"] = development_sweep("contrast_plausibility", PLAUSIBILITY)
        bench["raft_plausibility"] = development_sweep("contrast_plausibility", PLAUSIBILITY, arm="raft")
    if args.reader_sweep:
        print("sweeping the RAFT reader settings ...", flush=True)
        bench["reader_sweep"] = reader_sweep()
    if args.small_corpus:
        print("fine-tuning on a small corpus ...", flush=True)
        bench["small_corpus"] = small_corpus_check()
    for name in args.sweeps or []:
        print(f"timing the {name} sweep ...", flush=True)
        bench.setdefault("sweeps", {})[name] = run_sweep_file(name)
    # the measurements other than the profiles; with none of them and no --readme, both profiles are timed
    others = [args.dtype_check, args.adapters, args.prefix, args.negatives, args.training, args.sweep, args.context, args.demos,
              args.contrast, args.raft_contrast, args.plausibility, args.reader_sweep, args.gate, args.small_corpus, args.unit_questions,
              args.gate_ceiling]
    profiles = args.profile or ([] if any(others) or args.sweeps or args.readme else ["quick", "full"])
    for profile in profiles:
        print(f"timing the {profile} profile ...", flush=True)
        bench["profiles"][profile] = run_profile(profile)
        print(json.dumps(bench["profiles"][profile], indent=2), flush=True)
    if args.dtype_check:
        print("comparing bfloat16 with float32 on the quick run ...", flush=True)
        bench["dtype_check"] = dtype_check()
    if args.adapters:
        print("comparing named adapters with merged ones on the quick run ...", flush=True)
        bench["adapters_check"] = adapters_check()
    if args.prefix:
        print("generating the rag prompts with the shared prefix held once and whole ...", flush=True)
        bench["prefix_check"] = prefix_check()
    if args.gate:
        print("scoring the quick run's decline gate with each choice of signals ...", flush=True)
        bench["gate"] = gate_check()
    if args.gate_ceiling:
        bench["gate_ceiling"] = gate_ceiling()
    command = " ".join([".venv/bin/python experiments/benchmark.py", *(a for a in sys.argv[1:] if a != "--readme")])
    if profiles or any(others) or args.sweeps:  # this command measured something: it is named beside its figures
        bench["commands"] = [c for c in bench.get("commands", []) if c != command] + [command]
    bench["machine"] = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "cpu": cpu_name(),
                        "platform": platform.platform(terse=True)}
    bench["date"] = time.strftime("%Y-%m-%d")
    bench["profiles"] = {k: bench["profiles"][k] for k in PROFILES if k in bench["profiles"]}
    atomic_write_json(path, bench)
    # Only sweeps measured: the "Measured" section keeps the command that measured its figures.
    only_sweeps = bool(args.sweeps) and not profiles and not any(others)
    if args.readme:
        readme = (REPO / "README.md").read_text()
        if start not in readme or end not in readme:
            sys.exit(f"README.md has no {start} ... {end} section to rewrite")
        if not only_sweeps and not bench["profiles"]:  # a new checkout has no runs/: keep the section as measured
            sys.exit(f"{path.relative_to(REPO)} holds no profile: measure one first (--profile quick), or rewrite only a "
                     "sweep's block (--sweeps NAME)")
        if not only_sweeps:
            head, rest = readme.split(start, 1)
            command = " ".join([".venv/bin/python experiments/benchmark.py", *sys.argv[1:]])
            readme = head + readme_section(bench, command).replace(START, start).replace(END, end) + rest.split(end, 1)[1]
        shared = [n for n in (bench.get("sweeps") or {}) if own_marker(n)[0] not in readme]
        for name in args.sweeps or []:
            s, e = own_marker(name)
            if s in readme and e in readme:
                head, rest = readme.split(s, 1)
                readme = head + "\n".join([s, "", *sweep_block(bench, name), e]) + rest.split(e, 1)[1]
        if shared and SWEEPS_START in readme and SWEEPS_END in readme and set(args.sweeps or []) & set(shared):
            head, rest = readme.split(SWEEPS_START, 1)
            readme = head + sweeps_section(bench, shared) + rest.split(SWEEPS_END, 1)[1]
        atomic_write_text(REPO / "README.md", readme)
        print("README.md benchmark section rewritten")


if __name__ == "__main__":
    main()
