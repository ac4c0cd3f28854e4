"""Benchmark: time the quick and full profiles from scratch and record stage timings.

    .venv/bin/python experiments/benchmark.py                  # both profiles (about 35 minutes on 2 cores)
    .venv/bin/python experiments/benchmark.py --profile quick --readme
    .venv/bin/python experiments/benchmark.py --dtype-check --readme  # bfloat16 against float32 on the quick run

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

from ragvsft.files import atomic_write_json, atomic_write_text  # noqa: E402
from ragvsft.report import findings, markdown_table  # noqa: E402

START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
BARS = {"quick": 300, "full": 1800}  # seconds: the bars on the 2-core development machine


def run_profile(profile: str) -> dict:
    out = REPO / "runs" / f"bench-{profile}"
    shutil.rmtree(out, ignore_errors=True)
    command = [str(Path(sys.executable).with_name("ragvsft")), "run", f"experiments/{profile}.yaml", "--out", str(out)]
    began = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - began
    manifest = json.loads((out / "manifest.json").read_text())
    results = json.loads((out / "results.json").read_text())
    return {"profile": profile, "command": f"ragvsft run experiments/{profile}.yaml", "wall_seconds": round(seconds, 1),
            "bar_seconds": BARS.get(profile), "stage_seconds": manifest["timings"], "questions": results["run"]["questions"],
            "arms": len(results["arms"]), "facts": results["corpus"]["facts"],
            "training_examples": (results.get("training") or {}).get("examples"), "run_dir": str(out.relative_to(REPO))}


def dtype_check() -> dict:
    """Re-run the quick profile's probe in float32 on a copy of its bfloat16 run folder (index and adapter are
    shared, so only the generation dtype differs) and compare verdicts, accuracies and speed."""
    source, out = REPO / "runs" / "bench-quick", REPO / "runs" / "bench-quick-fp32"
    if not (source / "results.json").is_file():
        sys.exit("run the quick profile first: experiments/benchmark.py --profile quick")
    if not out.exists():
        shutil.copytree(source, out)
    command = [str(Path(sys.executable).with_name("ragvsft")), "run", "experiments/quick.yaml", "--out", str(out),
               "--set", "models.dtype=float32"]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    rows = {}
    for name, folder in (("bfloat16", source), ("float32", out)):
        rows[name] = {(r["arm"], r["qid"]): r for r in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())}
    shared = rows["bfloat16"].keys() & rows["float32"].keys()
    same = sum(rows["bfloat16"][k]["verdict"] == rows["float32"][k]["verdict"] for k in shared)
    results = {name: json.loads((folder / "results.json").read_text()) for name, folder in (("bfloat16", source), ("float32", out))}
    arms = {arm: {dtype: {"heldout_accuracy": results[dtype]["arms"][arm]["heldout"]["accuracy"],
                          "seconds_per_query": results[dtype]["arms"][arm]["seconds_per_query"]} for dtype in results}
            for arm in results["bfloat16"]["arms"]}
    return {"answers": len(shared), "same_verdict": same, "arms": arms}


def readme_section(bench: dict) -> str:
    machine = bench["machine"]
    lines = [START, "", f"Measured on {machine['cpus']} CPU cores ({machine['processor']}, {machine['platform']}), "
             f"{bench['date']}, with `.venv/bin/python experiments/benchmark.py --readme`:", "",
             "| profile | facts | questions × arms | training examples | wall time | bar | index | fine-tune | probe |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in bench["profiles"].values():
        s = p["stage_seconds"]
        lines.append(f"| `{p['command']}` | {p['facts']} | {p['questions']} × {p['arms']} | {p['training_examples']} | "
                     f"{p['wall_seconds'] / 60:.1f} min | {p['bar_seconds'] / 60:.0f} min | {s.get('index', 0):.0f} s | "
                     f"{s.get('finetune', 0):.0f} s | {s.get('probe', 0):.0f} s |")
    check = bench.get("dtype_check")
    if check:
        speedups = [a["float32"]["seconds_per_query"] / a["bfloat16"]["seconds_per_query"] for a in check["arms"].values()]
        gaps = [abs(a["float32"]["heldout_accuracy"] - a["bfloat16"]["heldout_accuracy"]) for a in check["arms"].values()]
        lines += ["", f"bfloat16 against float32 on the quick run (`--dtype-check`: same index and adapter, only the "
                      f"generation dtype differs): the same verdict on {check['same_verdict']} of {check['answers']} answers, "
                      f"held-out accuracy per arm at most {100 * max(gaps):.1f} points apart, generation "
                      f"{min(speedups):.1f}–{max(speedups):.1f}× faster in bfloat16."]
    for name, p in bench["profiles"].items():
        results = json.loads((REPO / p["run_dir"] / "results.json").read_text())
        lines += ["", f"The {name} profile's comparison table, as measured (`{p['run_dir']}/report.md`):", "",
                  markdown_table(results), ""]
        lines += [f"- {sentence}" for sentence in findings(results)]
    lines += ["", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", action="append", choices=["quick", "full"], help="profile(s) to time (default both)")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's benchmark section")
    parser.add_argument("--dtype-check", action="store_true", help="compare bfloat16 with float32 on the quick run")
    args = parser.parse_args()
    path = REPO / "runs" / "benchmark.json"
    bench = json.loads(path.read_text()) if path.is_file() else {"profiles": {}}
    for profile in args.profile or ([] if args.dtype_check else ["quick", "full"]):
        print(f"timing the {profile} profile ...", flush=True)
        bench["profiles"][profile] = run_profile(profile)
        print(json.dumps(bench["profiles"][profile], indent=2), flush=True)
    if args.dtype_check:
        print("comparing bfloat16 with float32 on the quick run ...", flush=True)
        bench["dtype_check"] = dtype_check()
    bench["machine"] = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "platform": platform.platform(terse=True)}
    bench["date"] = time.strftime("%Y-%m-%d")
    bench["profiles"] = {k: bench["profiles"][k] for k in ("quick", "full") if k in bench["profiles"]}
    atomic_write_json(path, bench)
    if args.readme:
        readme = (REPO / "README.md").read_text()
        if START not in readme or END not in readme:
            sys.exit(f"README.md has no {START} ... {END} section to rewrite")
        head, rest = readme.split(START, 1)
        atomic_write_text(REPO / "README.md", head + readme_section(bench) + rest.split(END, 1)[1])
        print("README.md benchmark section rewritten")


if __name__ == "__main__":
    main()
