"""Sweeps: one run folder per combination of swept settings and seeds, then the comparison across them.

    ragvsft sweep experiments/paraphrases.yaml      # runs/paraphrases/<setting>/ per combination + comparison.*
    ragvsft sweep experiments/models.yaml --devices cuda:0,cuda:1   # two runs at a time, one per GPU

An experiment file's `sweep:` section names config keys (dotted, as `--set` takes them) with the values to try, and
optionally `seeds:`; every other key of the file is the shared base. Every combination is checked before the first
run starts; each combination is an ordinary run folder (a rerun reuses its unchanged stages), and the parent folder
gets `sweep.json` and the cross-run comparison (compare.py). With `--devices`, the runs are placed on the devices
given, one run per device at a time, each an ordinary `ragvsft run` of its whole config (`logs/<run>.yaml`) in its
own process (seeds and the stage cache stay per run; CUDA_VISIBLE_DEVICES names its GPU), output in `logs/<run>.log`.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .config import DEFAULTS_PATH, Config, config_yaml, flatten, load_config
from .files import InputError, atomic_write_json, atomic_write_text, load_yaml_with_lines

SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class Combination:
    settings: dict  # dotted key -> value, in the order of the sweep section
    seed: int | None  # None: the config's seed
    folder: str  # the run folder's name under the sweep folder


def _folder_name(settings: dict, seed: int | None) -> str:
    """`finetune.questions_per_fact=2,seed=7`: readable, one folder per combination."""
    parts = [f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in settings.items()]
    parts += [f"seed={seed}"] if seed is not None else []
    return ",".join(parts).replace("/", "_").replace(" ", "") or "base"


def load_sweep(path: Path | str, overrides: list[str] | None = None) -> tuple[Config, list[Combination]]:
    """The base config and every combination of the file's sweep section; every problem as file:line first."""
    path = Path(path)
    data, lines = load_yaml_with_lines(path)
    section = data.get("sweep") if isinstance(data, dict) else None
    where = f"{path}:{lines.get(('sweep',), 1)}"
    if not isinstance(section, dict) or not section:
        raise InputError([f"{where}: a sweep needs a 'sweep:' section mapping config keys to lists of values"])
    base = load_config(path, overrides, allow_sweep=True)
    defaults, _ = load_yaml_with_lines(DEFAULTS_PATH)
    known = set(flatten(defaults))
    problems: list[str] = []
    axes: dict[str, list] = {}
    seeds: list[int] | None = None
    for key, values in section.items():
        at = f"{path}:{lines.get(('sweep', key), lines.get(('sweep',), 1))}"
        if not isinstance(values, list) or not values:
            problems.append(f"{at}: sweep.{key} must be a non-empty list of values")
            continue
        if key == "seeds":
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                problems.append(f"{at}: sweep.seeds must be a list of integers")
            else:
                seeds = list(dict.fromkeys(values))
            continue
        if key not in known or key in ("name", "out", "seed", "corpus"):
            problems.append(f"{at}: sweep.{key}: unknown key (a dotted config key such as finetune.epochs; "
                            "seeds go under sweep.seeds)")
            continue
        for value in values:
            try:
                load_config(path, overrides, {key: value}, allow_sweep=True)
            except InputError as exc:
                problems += [f"{at}: sweep.{key} = {value!r}: {p.split(': ', 1)[-1]}" for p in exc.problems]
        axes[key] = values
    if problems:
        raise InputError(problems)
    combos = []
    for values in itertools.product(*axes.values()):
        settings = dict(zip(axes, values))
        for seed in seeds or [None]:
            combos.append(Combination(settings, seed, _folder_name(settings, seed)))
    return base, combos


def combination_config(path: Path | str, overrides: list[str] | None, base: Config, combo: Combination) -> Config:
    out = base.run_dir / combo.folder
    direct = {"out": str(out)} | ({"seed": combo.seed} if combo.seed is not None else {})
    return load_config(path, overrides, combo.settings, allow_sweep=True, **direct)


def check_sweep_folder(folder: Path) -> None:
    """A sweep folder is new, or an earlier sweep's (its sweep.json): anything else is refused, nothing touched."""
    if folder.exists() and not folder.is_dir():
        raise InputError([f"{folder}:0: is a file; choose a new folder for the sweep"])
    if folder.is_dir() and any(folder.iterdir()) and not (folder / SWEEP_FILE).is_file():
        raise InputError([f"{folder}:0: holds files that are not a ragvsft sweep (no {SWEEP_FILE}); choose a new folder"])


def parse_devices(text: str | None) -> list[str]:
    """`--devices cuda:0,cuda:1` (or cpu entries, a run each): the devices to place runs on, checked by name."""
    devices = [d.strip() for d in (text or "").split(",") if d.strip()]
    bad = [d for d in devices if not (d == "cpu" or d == "mps" or (d.startswith("cuda:") and d[5:].isdigit()))]
    if bad:
        raise InputError([f"--devices: {', '.join(bad)}: name devices as cuda:0, cuda:1, ... (or cpu, mps)"])
    return devices


def _run_placed(combos: list[Combination], configs: list[Config], folder: Path, devices: list[str],
                console: Console) -> None:
    """Each device takes the next combination when its run ends: `ragvsft run logs/<run>.yaml` (the combination's
    whole config) in its own process, its output in logs/<run>.log."""
    todo: queue.Queue = queue.Queue()
    (folder / "logs").mkdir(exist_ok=True)
    for combo, cfg in zip(combos, configs):
        atomic_write_text(folder / "logs" / f"{combo.folder}.yaml", config_yaml(cfg))
        todo.put(combo)
    failed: list[str] = []

    # Runs that share the CPU share its cores: threads spinning on each other's cores made a tiny run 10x slower.
    threads_each = str(max(1, (os.cpu_count() or 1) // max(1, sum(d == "cpu" for d in devices))))

    def work(device: str) -> None:
        env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": device.split(":")[1]} if device.startswith("cuda:")
                                  else {"OMP_NUM_THREADS": threads_each} if device == "cpu" else {}))
        while True:
            try:
                combo = todo.get_nowait()
            except queue.Empty:
                return
            log = folder / "logs" / f"{combo.folder}.log"
            console.log(f"sweep: {combo.folder} on {device} (output: {log})")
            command = [sys.executable, "-m", "ragvsft.cli", "run", str(folder / "logs" / f"{combo.folder}.yaml"),
                       "--set", f"models.device={device.split(':')[0]}"]
            with open(log, "w", encoding="utf-8") as handle:
                done = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                failed.append(f"{log}:0: the run {combo.folder} on {device} failed (exit {done.returncode}); its "
                              "output is in this file")

    threads = [threading.Thread(target=work, args=(device,)) for device in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failed:
        raise InputError(sorted(failed))


def run_sweep(path: Path | str, overrides: list[str] | None = None, console: Console | None = None,
              corpus: str | None = None, out: str | None = None, encoder=None, devices: list[str] | None = None) -> Path:
    """Run every combination (each its own run folder), then write sweep.json and the comparison; return the folder.
    `devices`: place the runs there, one per device at a time, each in its own process."""
    from .presentation.compare import write_comparison
    from .run import run_experiment

    console = console or Console(stderr=True)
    extra = [f"corpus={corpus}"] if corpus else []
    extra += [f"out={out}"] if out else []
    base, combos = load_sweep(path, [*(overrides or []), *extra])
    configs = [combination_config(path, [*(overrides or []), *extra], base, c) for c in combos]
    folder = base.run_dir
    check_sweep_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"experiment": str(path), "overrides": overrides or [],
              "runs": [{"folder": c.folder, "settings": c.settings, "seed": c.seed} for c in combos]}
    atomic_write_json(folder / SWEEP_FILE, record | {"status": "running"})
    if devices:
        _run_placed(combos, configs, folder, devices, console)
    else:
        for i, (combo, cfg) in enumerate(zip(combos, configs), start=1):
            console.log(f"sweep: run {i}/{len(combos)}: {combo.folder}")
            run_experiment(cfg, console, encoder=encoder)
    atomic_write_json(folder / SWEEP_FILE, record | {"status": "complete"})
    write_comparison(folder, [folder])
    return folder
