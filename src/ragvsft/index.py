"""RAG side: token-aware chunking with overlap, sentence embeddings, a FAISS index, top-k retrieval, and retrieval
metrics (recall@k, MRR) against each fact's evidence.

The index lives in the run folder as `index/faiss.index` (FAISS's own format, never pickle) and `index/chunks.jsonl`
(the chunk table). Any encoder with `token_spans(text)` and `encode(texts)` (L2-normalised rows) works; tests use a
keyword mock.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from .corpus import Corpus, Fact
from .files import atomic_write_bytes, atomic_write_jsonl, read_jsonl


class Encoder(Protocol):
    def token_spans(self, text: str) -> list[tuple[int, int]]: ...
    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Chunk:
    id: str
    document: str
    start: int  # character offsets into the document
    end: int
    text: str


def chunk_document(path: str, text: str, spans: list[tuple[int, int]], size: int, overlap: int) -> list[Chunk]:
    """Windows of `size` tokens, each starting `size - overlap` tokens after the previous one."""
    spans = [s for s in spans if s[1] > s[0]]
    if not spans:
        return []
    chunks, step, first = [], size - overlap, 0
    while True:
        window = spans[first: first + size]
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(f"{path}#{len(chunks)}", path, start, end, text[start:end]))
        if first + size >= len(spans):
            return chunks
        first += step


def chunk_corpus(corpus: Corpus, encoder: Encoder, size: int, overlap: int) -> list[Chunk]:
    return [c for d in corpus.documents for c in chunk_document(d.path, d.text, encoder.token_spans(d.text), size, overlap)]


class Index:
    """Chunks plus a FAISS inner-product index over their normalised embeddings (inner product = cosine)."""

    def __init__(self, chunks: list[Chunk], vectors: np.ndarray | None = None, faiss_index=None):
        self.chunks = chunks
        if faiss_index is None:
            faiss_index = faiss.IndexFlatIP(vectors.shape[1])
            faiss_index.add(np.ascontiguousarray(vectors, dtype="float32"))
        self.faiss = faiss_index

    @classmethod
    def build(cls, corpus: Corpus, encoder: Encoder, size: int, overlap: int) -> "Index":
        chunks = chunk_corpus(corpus, encoder, size, overlap)
        return cls(chunks, encoder.encode([c.text for c in chunks]))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        atomic_write_jsonl(folder / "chunks.jsonl", [asdict(c) for c in self.chunks])
        atomic_write_bytes(folder / "faiss.index", faiss.serialize_index(self.faiss).tobytes())

    @classmethod
    def load(cls, folder: Path) -> "Index":
        folder = Path(folder)
        chunks = [Chunk(**row) for row in read_jsonl(folder / "chunks.jsonl")]
        raw = np.frombuffer((folder / "faiss.index").read_bytes(), dtype="uint8")
        index = faiss.deserialize_index(raw)
        if index.ntotal != len(chunks):
            raise ValueError(f"{folder}: index holds {index.ntotal} vectors but the chunk table {len(chunks)}")
        return cls(chunks, faiss_index=index)

    def search(self, encoder: Encoder, queries: list[str], k: int) -> list[list[tuple[Chunk, float]]]:
        """Top-k chunks with their cosine scores for each query."""
        if not queries:
            return []
        scores, ids = self.faiss.search(np.ascontiguousarray(encoder.encode(queries), dtype="float32"),
                                        min(k, len(self.chunks)))
        return [[(self.chunks[i], float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]


def evidence_spans(text: str, evidence: str) -> list[tuple[int, int]]:
    """Character spans of every occurrence of `evidence` in `text`, whitespace-insensitive."""
    pattern = r"\s+".join(re.escape(word) for word in evidence.split())
    return [m.span() for m in re.finditer(pattern, text)] if pattern else []


@dataclass(frozen=True)
class Gold:
    """A fact's gold chunks. `whole` is False when no chunk holds the whole evidence (it straddles a chunk boundary):
    then the chunks holding the largest part of it are gold, so a retrieval miss is never an artefact of chunking."""

    ids: frozenset[str]
    whole: bool


def gold_chunks(fact: Fact, chunks: list[Chunk], document_text: str) -> Gold:
    """The chunks of the fact's document that contain its evidence (whitespace-normalised), or that hold most of it."""
    spans = evidence_spans(document_text, fact.evidence)
    mine = [c for c in chunks if c.document == fact.document]
    whole = {c.id for c in mine for s, e in spans if c.start <= s and e <= c.end}
    if whole or not spans:
        return Gold(frozenset(whole), bool(whole))
    overlap = {c.id: max(min(e, c.end) - max(s, c.start) for s, e in spans) for c in mine}
    best = max(overlap.values(), default=0)
    return Gold(frozenset(cid for cid, size in overlap.items() if size == best > 0), False)


def gold_chunk_map(facts, chunks: list[Chunk], documents) -> dict[str, Gold]:
    """fact id -> Gold for every fact; `documents` are the corpus's Document records."""
    texts = {d.path: d.text for d in documents}
    return {f.id: gold_chunks(f, chunks, texts.get(f.document, "")) for f in facts}


def retrieval_metrics(ranked: list[list[str]], gold: list[set[str]], ks: list[int]) -> dict:
    """recall@k (share of queries with a gold chunk in the top k) and MRR over the ranked lists."""
    n = len(ranked)
    if n == 0:
        return {"queries": 0, "recall_at": {str(k): 0.0 for k in ks}, "mrr": 0.0}
    first_hit = []
    for ids, wanted in zip(ranked, gold):
        first_hit.append(next((rank for rank, cid in enumerate(ids, start=1) if cid in wanted), None))
    recall = {str(k): round(sum(1 for r in first_hit if r is not None and r <= k) / n, 4) for k in ks}
    mrr = round(sum(1.0 / r for r in first_hit if r is not None) / n, 4)
    return {"queries": n, "recall_at": recall, "mrr": mrr}
