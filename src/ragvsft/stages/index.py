"""Stage `index`: chunk, embed and index every document (the RAG side, index.py)."""

from __future__ import annotations

from ..config import Config
from ..corpus import Corpus
from ..files import sha256_json
from ..index import UNITS, Encoder, Index
from .cache import Run

CHUNKER = 2  # section chunking's version: 2 cuts an over-long paragraph between sentences, not inside one


def keys(cfg: Config, corpus: Corpus, embedder_key: str) -> tuple[str, str]:
    """(the stage's key, the key of what the arms search): exactly what chunking and embedding read — the documents,
    the embedder, the chunk sizes (not k, not the facts) — and then the retriever, which reads the same index: it
    changes what every retrieving arm is shown, not the stage."""
    key = sha256_json({"documents": [[d.path, d.text] for d in corpus.documents], "embedder": embedder_key,
                       "chunking": cfg.index.chunking, "chunk_tokens": cfg.index.chunk_tokens,
                       "chunk_overlap": cfg.index.chunk_overlap, "chunker": CHUNKER, "units": UNITS})
    return key, sha256_json({"index": key, "retriever": cfg.index.retriever})


def stage(run: Run, corpus: Corpus, encoder: Encoder, embedder_key: str, built: Index | None = None) -> tuple[Index, str]:
    """(the index searched by the configured retriever, its key); `built`: the same index already embedded by the
    embedder stage (same chunking, same encoder), saved instead of embedding the chunks again."""
    cfg = run.cfg
    with run.timing("index"):
        key, searched = keys(cfg, corpus, embedder_key)

        def build(_):
            run.log(f"index: chunking {len(corpus.documents)} documents and embedding them")
            index = built or Index.build(corpus, encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap,
                                         cfg.index.chunking)
            # Index.save writes a temporary folder that replaces index/. The meta says which encoder embedded the
            # chunks: `ask` and the demo must embed questions with the same one.
            index.save(run.run_dir / "index", {"encoder": "tuned" if embedder_key != run.hashes["embedder"] else "configured",
                             "embedder_key": embedder_key})
            return index

        index = run.stage("index", key, None, ("index/faiss.index", "index/chunks.jsonl", "index/meta.json"), build)
        if index is None:
            index = Index.load(run.run_dir / "index")
    return index.using(cfg.index.retriever), searched
