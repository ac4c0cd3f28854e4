"""Small file helpers shared by every stage: atomic writes, content hashes, YAML with line numbers.

Every result file is written through `atomic_write_*`, so an interrupted run never leaves a half-written file that a
later run would trust. Input errors are collected as `file:line: message` strings and raised together as `InputError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml


class InputError(Exception):
    """Bad user input (corpus, config, run folder): every problem found, each as `file:line: message`."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode ordinary file creation would (0666 less the umask), so a
        # shared report stays readable by colleagues or a web server.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file this tool wrote itself (user files go through the corpus validator instead)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    rows.append(json.loads(line))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InputError([f"{path}:{number}: damaged ({type(exc).__name__}); rerun `ragvsft run` with its config to "
                          "recompute it"]) from None
    except UnicodeDecodeError:
        raise InputError([f"{path}:0: not UTF-8; rerun `ragvsft run` with its config to recompute it"]) from None
    return rows


def read_json(path: Path, remedy: str) -> Any:
    """A JSON file written by a run; a damaged one is an InputError at its real line, ending with `remedy`."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError([f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); {remedy}"]) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise InputError([f"{path}:1: not valid JSON ({type(exc).__name__}); {remedy}"]) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def sha256_tree(root: Path, paths: list[Path] | None = None) -> str:
    """Hash of the relative names and contents of files under `root` (all files when `paths` is None)."""
    root = Path(root)
    files = sorted(paths if paths is not None else (p for p in root.rglob("*") if p.is_file()))
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(Path(p).relative_to(root)).encode("utf-8") + b"\0")
        digest.update(sha256_file(Path(p)))
    return digest.hexdigest()


def sha256_file(path: Path) -> bytes:
    """A file's SHA-256, read in 1 MiB blocks: a model's weight shards are never held in memory whole. Remembered
    for the process while the file keeps its size and modification time: a run hashes its model folder for the
    checks, the stage keys and the manifest, and 0.5 GB of weights took a second or two each time."""
    stat = Path(path).stat()
    return _sha256_file(str(Path(path).resolve()), (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


@functools.lru_cache(maxsize=512)
def _sha256_file(path: str, version: tuple) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for part in iter(lambda: handle.read(1 << 20), b""):
            digest.update(part)
    return digest.digest()


MAX_YAML_DEPTH = 64


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML file; return the data and a map from key path (tuple of keys) to its 1-based line number.

    Raises InputError naming the file and line for syntax errors or non-UTF-8 bytes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError([f"{path}:1: not valid UTF-8 ({exc.reason} at byte {exc.start})"]) from None
    except FileNotFoundError:
        raise InputError([f"{path}:0: file not found"]) from None
    except IsADirectoryError:
        raise InputError([f"{path}:0: is a folder, not a YAML file"]) from None
    try:
        # No config or corpus.yaml needs anchors or deep nesting; refusing aliases (*name) and nesting past
        # MAX_YAML_DEPTH while reading the events makes an alias bomb (a few lines that expand to billions of items)
        # or a file of brackets an error in a second instead of a hang (composing 50,000 levels took minutes).
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise InputError([f"{path}:{event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                                  "allowed; write the value out"])
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_YAML_DEPTH:
                raise InputError([f"{path}:{event.start_mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels "
                                  "deep; a config or corpus.yaml needs a few"])
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise InputError([f"{path}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    except RecursionError:
        raise InputError([f"{path}:1: nested too deeply to be a config"]) from None
    lines: dict[tuple, int] = {}

    def walk(n, prefix: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = prefix + (key_node.value,)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(n, yaml.SequenceNode):  # list items by index, e.g. (3,) for the fourth claim of a ledger
            for i, item in enumerate(n.value):
                lines[prefix + (i,)] = item.start_mark.line + 1
                walk(item, prefix + (i,))

    if node is not None:
        walk(node, ())
    return data, lines


# What a run folder may hold: everything `ragvsft run` writes (and the temporary names it uses while writing).
RUN_ENTRIES = {"config.yaml", "stages.json", "manifest.json", "index", "adapter", "reader", "finetune_set.jsonl",
               "reader_set.jsonl", "finetune_set.trl.jsonl", "reader_set.trl.jsonl", "predictions.jsonl", "development.jsonl", "results.json", "results.csv", "report.md", "report.html",
               "plots", "update", "embedder", ".embedder.tmp", ".trainer", ".adapter.tmp", ".reader.tmp", ".update.tmp"}


def check_run_folder(run_dir: Path) -> None:
    """`--out` must be a new folder or a ragvsft run folder: never overwrite or delete a stranger's files."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError([f"{run_dir}:0: --out names a file, not a folder; choose a new folder for the run"])
    blocking = next((p for p in run_dir.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise InputError([f"{blocking}:0: is a file, so --out {run_dir} cannot be made under it; choose a folder "
                          "elsewhere for the run"])
    if not run_dir.is_dir():
        return
    strangers = sorted(p.name for p in run_dir.iterdir()
                       if p.name not in RUN_ENTRIES and not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if strangers:
        raise InputError([f"{run_dir}:0: --out names a folder that holds files ragvsft did not write "
                          f"({', '.join(strangers[:5])}{', ...' if len(strangers) > 5 else ''}); choose a new folder "
                          "or an earlier run folder, nothing was changed"])


def require_complete_run(run_dir: Path) -> dict:
    """The manifest of a finished run, or an InputError saying what is missing: a folder whose last run stopped (no
    manifest) may mix files of two runs, and nothing should read it as current."""
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.json"
    if not run_dir.is_dir():
        raise InputError([f"{run_dir}:0: no such run folder; run `ragvsft run` first"])
    if not manifest.is_file():
        raise InputError([f"{manifest}:0: the last run in this folder did not finish (no manifest.json), so its files "
                          "may mix two runs; run `ragvsft run` with its config again to complete it"])
    data = read_json(manifest, "run `ragvsft run` with its config again to rewrite it")
    if not isinstance(data, dict) or data.get("status") != "complete":
        raise InputError([f"{manifest}:1: not the manifest of a complete run"])
    # The reports are derived from results.json (`ragvsft report` writes them again); every other listed file is input.
    derived = lambda name: name in ("report.md", "report.html", "results.csv") or name.startswith("plots/")  # noqa: E731
    missing = [name for name in data.get("files", []) if not derived(name) and not (run_dir / name).is_file()]
    if missing:
        raise InputError([f"{run_dir / missing[0]}:0: listed in manifest.json but missing "
                          f"({len(missing)} file(s) missing); run `ragvsft run` again"])
    return data
