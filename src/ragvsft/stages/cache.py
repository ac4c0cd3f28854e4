"""The cache protocol every stage shares, written once: key → fresh? → forget → compute into a temporary → replace →
done, with the stage's compute time kept in `stages.json` (a reused stage reports the time it took when computed).

A stage module (embedder.py, index.py, ...) computes its key from exactly what it reads and hands its body to
`Run.stage`; nothing else in the package writes a stage's outputs or its record."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from ..config import Config
from ..files import InputError, atomic_write_json, read_json

T = TypeVar("T")


class Records:
    """Which inputs each stage's outputs in a run folder were made from, and how long they took (`stages.json`)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "stages.json"
        remedy = "delete the file to recompute every stage (nothing was changed)"
        self.entries = read_json(self.path, remedy) if self.path.is_file() else {}
        if not (isinstance(self.entries, dict) and all(isinstance(v, dict) and "key" in v for v in self.entries.values())):
            raise InputError([f"{self.path}:1: the stage records of this run folder are damaged; {remedy}"])

    def fresh(self, stage: str, key: str, *outputs: Path) -> bool:
        return self.entries.get(stage, {}).get("key") == key and all(p.exists() for p in outputs)

    def done(self, stage: str, key: str) -> None:
        self.entries[stage] = {"key": key, "seconds": None}
        atomic_write_json(self.path, self.entries)

    def forget(self, stage: str) -> None:
        if self.entries.pop(stage, None) is not None:
            atomic_write_json(self.path, self.entries)

    def seconds(self, stage: str, measured: float) -> float:
        """The stage's compute time: measured now, or, for a reused stage, as measured when it was computed."""
        entry = self.entries.get(stage)
        if entry is None:
            return measured
        if entry["seconds"] is None:
            entry["seconds"] = measured
            atomic_write_json(self.path, self.entries)
        return entry["seconds"]


@dataclass
class Run:
    """What every stage of one run shares: the config, the run folder's stage records, hashes and timings."""

    cfg: Config
    run_dir: Path
    console: Console
    records: Records
    hashes: dict
    timings: dict = field(default_factory=dict)
    reused: list = field(default_factory=list)
    reused_arms: list = field(default_factory=list)

    def log(self, line: str) -> None:
        self.console.log(line)

    def stage(self, name: str, key: str, folder: str | None, outputs: tuple[str, ...],
              compute: Callable[[Path | None], T]) -> T | None:
        """Run `compute` unless the outputs of `name` (paths in the run folder) were made from `key`; None if reused.

        With a `folder`, compute writes into a temporary folder that then replaces it, so an interrupted stage leaves
        the old outputs or none, never a mix; without one, compute writes its own file atomically."""
        if self.records.fresh(name, key, *(self.run_dir / p for p in outputs)):
            self.reused.append(name)
            self.log(f"{name}: reused (its inputs are unchanged)")
            return None
        return self.compute(name, key, folder, compute)

    def compute(self, name: str, key: str, folder: str | None, compute: Callable[[Path | None], T]) -> T:
        """Compute `name` whatever its record says (Run.stage's second half; the probe decides reuse per arm)."""
        self.records.forget(name)  # from here until done(), the stage's outputs vouch for nothing
        tmp = None
        if folder is not None:
            tmp = self.run_dir / f".{folder}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
        value = compute(tmp)
        if folder is not None:
            shutil.rmtree(self.run_dir / folder, ignore_errors=True)
            os.replace(tmp, self.run_dir / folder)
        self.records.done(name, key)
        return value

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        """Record the block's seconds as the stage's time (or, reused, the time it took when computed)."""
        began = time.perf_counter()
        yield
        self.timings[name] = self.records.seconds(name, round(time.perf_counter() - began, 2))
