"""Stage `embedder`: tune the sentence embedder on the sample's train questions (and the development facts'
questions, index.tune_development) against their gold chunks or evidence units (embedder.py); kept only if it
retrieves better on held-back train questions."""

from __future__ import annotations

from ..config import Config
from ..corpus import Corpus
from ..embedder import TUNED, hard_negatives, tune_encoder, tuning_pairs, validation_figures
from ..files import atomic_write_json, read_json, sha256_json
from ..index import UNITS, Encoder, Index, chunk_corpus
from ..models import SentenceEncoder, load_encoder
from ..probe import development_facts
from .cache import Run


def inputs(cfg: Config, corpus: Corpus, sample: Corpus, encoder: Encoder, embedder_hash: str) -> tuple:
    """What tuning reads, and its key: (chunks, development facts, pairs, validation questions, key). The key needs
    the chunks only: embedding them is left to the stage when it tunes."""
    chunks = chunk_corpus(corpus, encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap, cfg.index.chunking)
    development = development_facts(corpus, sample) if cfg.index.tune_development else ()
    pairs, validation = tuning_pairs(sample, chunks, cfg.index.tune_units, cfg.index.headed, development,
                                     probes=cfg.index.tune_development is True)
    settings = {k: getattr(cfg.index, k) for k in ("tune_epochs", "tune_learning_rate", "tune_batch_size")}
    settings["precision"] = cfg.finetune.precision  # the embedder trains in the run's training precision
    if cfg.index.tune_negatives:  # mined from the untuned embedder and these chunks: the key holds what decides them
        settings |= {"negatives": True, "k": cfg.index.k, "headed": cfg.index.headed}
    key = sha256_json({"embedder": embedder_hash, "pairs": [[p.question, p.chunk_id] for p in pairs], "units": UNITS,
                       "chunks": [[c.id, c.text] for c in chunks], "settings": settings, "seed": cfg.seed})
    return chunks, development, pairs, validation, key


def stage(run: Run, corpus: Corpus, sample: Corpus, encoder: Encoder) -> tuple[Encoder, str, dict | None, Index | None]:
    """(encoder to use, its key, figures, and when it was just tuned, the index of the run's chunks under the encoder
    to use, for the index stage)."""
    cfg = run.cfg
    if not cfg.index.tune_embedder:
        return encoder, run.hashes["embedder"], None, None
    built = None
    with run.timing("embedder"):
        chunks, development, pairs, validation, key = inputs(cfg, corpus, sample, encoder, run.hashes["embedder"])

        def tune(tmp):
            nonlocal encoder, built
            run.log(f"embedder: tuning on {len(pairs)} (train question, gold chunk or evidence unit) pairs")
            texts = [c.text for c in chunks]
            untuned = Index(chunks, encoder.encode(texts))
            before = validation_figures(untuned, encoder, validation)
            trained = (hard_negatives(pairs, untuned, encoder, cfg.index.k, cfg.index.headed)
                       if cfg.index.tune_negatives else pairs)
            training = tune_encoder(encoder, trained, cfg.index.tune_epochs, cfg.index.tune_learning_rate,
                                    cfg.index.tune_batch_size, cfg.seed, run.log, cfg.finetune.precision)
            tuned = Index(chunks, encoder.encode(texts))
            after = validation_figures(tuned, encoder, validation)
            figures = {"pairs": len(pairs), "hard_negatives": sum(p.negative is not None for p in trained),
                       "validation_questions": len(validation), **training,
                       "development_facts": len(development),
                       "validation_before": before, "validation_after": after, "kept": after["mrr"] > before["mrr"]}
            if figures["kept"]:
                encoder.model.save(str(tmp / TUNED.name))
            else:  # no better on the held-back train questions: the original weights, untouched
                encoder = load_encoder(cfg.models.embedder, cfg.models.device)
            built = tuned if figures["kept"] else untuned  # what the index stage would embed again
            atomic_write_json(tmp / "figures.json", figures)
            return figures

        figures = run.stage("embedder", key, "embedder", ("embedder/figures.json",), tune)
        if figures is None:
            figures = read_json(run.run_dir / "embedder" / "figures.json", "delete the embedder folder to tune it again")
            if figures["kept"]:
                encoder = SentenceEncoder(run.run_dir / TUNED, cfg.models.device)
    return encoder, key if figures["kept"] else run.hashes["embedder"], figures, built
