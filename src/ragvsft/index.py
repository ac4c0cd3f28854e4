"""RAG side: chunking, sentence embeddings, a FAISS index, top-k retrieval, and retrieval metrics (recall@k, MRR)
against each fact's evidence.

Two chunkings (`index.chunking`): `section` (default) follows the markdown structure — a chunk never crosses a
heading, starts with the document title and heading path ("Business Travel Policy > Allowances"), and a table is split
by rows with its header row repeated in every piece, all within `chunk_tokens`; `window` cuts fixed windows of
`chunk_tokens` tokens with `chunk_overlap` tokens of overlap. A chunk's `start`/`end` are the document characters it
covers (its body), which decide the gold chunks; its `text` is what is embedded and shown to the model.

Three retrievers (`index.retriever`): `dense` (default) ranks chunks by cosine similarity in FAISS; `bm25` by
lexical BM25 (bm25s, built from the chunk table in memory, a few milliseconds); `hybrid` fuses the two rankings by
reciprocal rank fusion (RRF, k=60).

The index lives in the run folder as `index/faiss.index` (FAISS's own format, never pickle), `index/chunks.jsonl`
(the chunk table) and `index/meta.json` (which encoder embedded them), written together as one folder. Any encoder with `token_spans(text)` and `encode(texts)` (L2-normalised rows) works; tests use a
keyword mock.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from .corpus import Corpus, Fact
from .files import atomic_write_bytes, atomic_write_json, atomic_write_jsonl, read_jsonl


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


HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
TABLE_RULE = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?$")
LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s+")  # a list marker and the space after it


@dataclass(frozen=True)
class Block:
    """A paragraph, list item or table row: document characters [start, end) under a heading path."""
    start: int
    end: int
    headings: tuple[str, ...]
    table_header: str | None = None


def document_blocks(text: str) -> list[Block]:
    """The document's paragraphs, list items and table rows, each with the headings above it (markdown `#` lines)."""
    blocks: list[Block] = []
    headings: list[tuple[int, str]] = []
    header: str | None = None  # the current table's header row
    para: list[int] | None = None  # [start, end] of the paragraph being read

    def close() -> None:
        nonlocal para
        if para:
            blocks.append(Block(para[0], para[1], tuple(h for _, h in headings)))
        para = None

    offset = 0
    for line in text.splitlines(keepends=True):
        start, stripped = offset, line.strip()
        end = start + len(line.rstrip("\r\n"))
        offset += len(line)
        heading = HEADING.match(stripped)
        if heading:
            close()
            level = len(heading.group(1))
            headings = [h for h in headings if h[0] < level] + [(level, heading.group(2))]
            header = None
        elif not stripped:
            close()
            header = None
        elif stripped.startswith("|"):
            close()
            if header is None:
                header = stripped
            elif not TABLE_RULE.match(stripped):
                blocks.append(Block(start, end, tuple(h for _, h in headings), header))
        else:
            header = None
            if para is None or LIST_ITEM.match(stripped):
                close()
                para = [start, end]
            para[1] = end
    close()
    return blocks


def chunk_sections(path: str, text: str, token_spans, limit: int) -> list[Chunk]:
    """Chunks that follow the document: consecutive blocks under the same headings (and table) packed up to `limit`
    tokens, each prefixed with the heading path (the file name where there is none) and, for table rows, the header
    row. A block longer than the limit is cut into token windows."""
    chunks: list[Chunk] = []
    count_tokens = lambda t: len(token_spans(t))  # noqa: E731

    def emit(prefix: str, start: int, end: int, body: str) -> None:
        chunks.append(Chunk(f"{path}#{len(chunks)}", path, start, end, f"{prefix}\n{body}"))

    group: list[Block] = []
    blocks = document_blocks(text)
    for i, block in enumerate(blocks):
        group.append(block)
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        if following and (following.headings, following.table_header) == (block.headings, block.table_header):
            continue
        prefix = " > ".join(block.headings) or Path(path).stem
        if block.table_header:
            prefix += "\n" + block.table_header
        room = max(8, limit - count_tokens(prefix))
        packed: list[Block] = []
        for part in group + [None]:
            size = None if part is None else count_tokens(text[part.start:part.end])
            if packed and (part is None or count_tokens(text[packed[0].start:part.end]) > room):
                emit(prefix, packed[0].start, packed[-1].end, text[packed[0].start:packed[-1].end])
                packed = []
            if part is not None and size > room:  # one over-long block: its sentences packed, never cut mid-sentence
                for start, end in _sentence_pieces(text, part.start, part.end, token_spans, room):
                    emit(prefix, start, end, text[start:end])
            elif part is not None:
                packed.append(part)
        group = []
    return chunks


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


def _sentence_pieces(text: str, start: int, end: int, token_spans, room: int) -> list[tuple[int, int]]:
    """Document character ranges that cut the block text[start:end] into pieces of at most `room` tokens at sentence
    ends (SENTENCE_END, as chunk_units reads them); only a sentence longer than `room` is cut into token windows.
    Why: token windows cut "order code TRN-" from "T5-WAK.", so no chunk and no unit held the answer whole."""
    body = text[start:end]
    bounds = [0] + [m.end() for m in SENTENCE_END.finditer(body)] + [len(body)]
    sentences = [(a, b) for a, b in zip(bounds, bounds[1:]) if body[a:b].strip()]
    pieces: list[tuple[int, int]] = []
    for a, b in sentences:
        if pieces and len(token_spans(body[pieces[-1][0]:b])) <= room:
            pieces[-1] = (pieces[-1][0], b)  # the sentence joins the piece before it
        elif len(token_spans(body[a:b])) <= room:
            pieces.append((a, b))
        else:
            pieces += [(a + w.start, a + w.end) for w in chunk_document("", body[a:b], token_spans(body[a:b]), room, 0)]
    # a piece ends at its sentence's last character, not the whitespace the next one starts after
    return [(start + a, start + a + len(body[a:b].rstrip())) for a, b in pieces]


UNITS = 4  # how chunk_units cuts and writes units (stage keys hold it): 2 writes a table row as "column: value" fields,
# 3 makes each list item a unit of its own, 4 keeps an item's wrapped lines with it and drops "---" rules
THEMATIC_BREAK = re.compile(r"^(?:-{3,}|\*{3,}|_{3,})$")


def _table_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _row_unit(header: str, row: str) -> str:
    """A table row as its header's column names with the row's values ("Vessel: MV Tidewren; Passengers: 510"), or
    header and row as written where their cells do not pair up. Why: a 135M reader shown "| MV Tidewren | 2015 | 74 m |
    510 | 62 |" under a separate header line answered the passengers question with the wrong column; named fields
    raised RAG on the second corpus's train questions from 22 to 27 of 40 and on the quick profile's development
    questions from 48 to 52 of 80."""
    names, values = _table_cells(header), _table_cells(row)
    if len(names) != len(values):
        return f"{header}\n{row}"
    return "; ".join(f"{name}: {value}" if name else value for name, value in zip(names, values))


def heading_line(text: str) -> str | None:
    """The heading path that leads a section chunk or one of its units: the first line of a text of several lines."""
    return text.split("\n", 1)[0] if "\n" in text else None


def unit_body(text: str) -> str:
    """A unit's own words: the text without its heading line (`heading_line`)."""
    return text.split("\n", 1)[1] if heading_line(text) is not None else text


def chunk_units(text: str, headed: bool) -> list[str]:
    """A chunk's sentences, list items and table rows, each led by the chunk's heading line (when `headed`); a row is
    written as its table's column names with its values (`_row_unit`), an item without its list marker: small pieces
    a 135M reader can use without losing what they are about. Why items: joined as prose, a list ran together into
    one unit ("- Uniform allowance: 240 pounds per year, paid in March. - Overnight allowance: ..."), since a list
    marker does not start a sentence; 39 of the shipped corpus's 247 chunks hold a list."""
    lines = text.split("\n")
    head = lines.pop(0) if headed and heading_line(text) is not None else ""
    units, header, paragraphs = [], None, [[]]
    for line in (line.strip() for line in lines):
        if line.startswith("|"):
            if header is None:
                header = line
            elif not TABLE_RULE.match(line):
                units.append("\n".join(x for x in (head, _row_unit(header, line)) if x))
        elif item := LIST_ITEM.match(line):
            paragraphs.append([line[item.end():]])  # an item starts a paragraph of its own; its wrapped lines follow
        elif THEMATIC_BREAK.match(line):
            paragraphs.append([])  # a "---" rule separates; it is no sentence to show
        elif line:
            paragraphs[-1].append(line)
        else:
            paragraphs.append([])
    units += ["\n".join(x for x in (head, sentence.strip()) if x) for paragraph in paragraphs if paragraph
              for sentence in SENTENCE_END.split(" ".join(paragraph)) if sentence.strip()]
    return units


@dataclass(frozen=True)
class UnitQuestions:
    """The fine-tuning set's questions, each attached to the sentence or row that names its answer (its evidence unit,
    as RAFT finds its oracle passage): a unit is then chosen by its cosine with the question plus `weight` x the
    highest cosine of a question attached to it (document expansion by queries, Nogueira et al. 2019, "doc2query").
    Why: a probe question is a paraphrase of its fact's train questions, and MiniLM matches a paraphrase to a question
    better than to the sentence that answers it. Units no train question names are chosen by their cosine alone.
    Two readers of units leave it out: the RAFT reader's training contexts (its training questions are the attached
    ones, so each would be shown its own evidence unit) and the decline gate's signals (a question like a train
    question is not thereby answerable: the probe asks only about the facts listed, a user need not)."""
    by_unit: dict[str, tuple[str, ...]]
    weight: float


def unit_questions(facts, chunks: list[Chunk], documents, headed: bool, weight: float) -> UnitQuestions:
    """Every train question of `facts` attached to its evidence unit (`evidence_unit`, over its fact's gold chunks);
    a question whose gold chunks name its answer in no unit is left out."""
    gold = gold_texts(facts, chunks, documents)
    by_unit: dict[str, list[str]] = {}
    for fact in facts:
        for question in fact.train_questions:
            if unit := evidence_unit(gold[fact.id], list(fact.gold), question, headed):
                by_unit.setdefault(unit, []).append(question)
    return UnitQuestions({unit: tuple(qs) for unit, qs in by_unit.items()}, weight)


def _attached_similarity(encoder: Encoder, queries: np.ndarray, units: list[str], bank: UnitQuestions) -> np.ndarray:
    """[query, unit]: the highest cosine of the query with a train question attached to the unit (0 where none)."""
    attached = [(i, q) for i, unit in enumerate(units) for q in bank.by_unit.get(unit, ())]
    best = np.zeros((len(queries), len(units)), dtype=np.float32)
    if attached:
        cosines = queries @ encoder.encode([q for _, q in attached]).T
        for column, (i, _) in enumerate(attached):
            best[:, i] = np.maximum(best[:, i], cosines[:, column])
    return best


def select_units(encoder: Encoder, questions: list[str], contexts: list[list[tuple[str, str]]], n: int,
                 headed: bool, bank: UnitQuestions | None = None) -> list[list[tuple[str, str]]]:
    """For each question, the `n` sentences or table rows of its retrieved chunks most similar to it (cosine, plus
    the weighted similarity of the train questions attached to each unit where `bank` is given), best first, as
    (source chunk id, unit text). Adding the cosine of the unit's whole chunk to its score was measured and bought
    nothing once the embedder is tuned on units (index.tune_units)."""
    flat = [(qi, cid, unit) for qi, context in enumerate(contexts) for cid, text in context
            for unit in chunk_units(text, headed)]
    out: list[list[tuple[str, str]]] = [[] for _ in questions]
    if not flat:
        return out
    # A chunk's units recur for every question that retrieves it: each distinct unit is embedded once.
    distinct = list(dict.fromkeys(u for _, _, u in flat))
    position = {u: i for i, u in enumerate(distinct)}
    units = encoder.encode(distinct)[[position[u] for _, _, u in flat]]
    queries = encoder.encode(questions)
    scores = (units * queries[[qi for qi, _, _ in flat]]).sum(axis=1)
    if bank and bank.weight:
        attached = _attached_similarity(encoder, queries, distinct, bank)
        scores = scores + bank.weight * attached[[qi for qi, _, _ in flat], [position[u] for _, _, u in flat]]
    for i in sorted(range(len(flat)), key=lambda i: -scores[i]):
        qi, cid, unit = flat[i]
        if len(out[qi]) < n:
            out[qi].append((cid, unit))
    return out


UNIT_CHOICES = {  # how a reader's text is chosen from the top-k chunks; the names are the report's row labels
    "best unit": "the unit most similar to the question (cosine), what `index.context_units: 1` shows",
    "best two units": "the two most similar units",
    "best unit and the one before it": "the best unit led by the sentence or row before it in its chunk",
    "best unit of the first chunk": "the most similar unit of the best-ranked chunk only",
    "best unit, chunk score added": "unit cosine plus its chunk's retrieval score",
    "best unit, train questions attached": "unit cosine plus the weighted cosine of the train questions whose answer "
                                           "it names (index.unit_questions), what a weight above 0 shows",
    "whole chunks": "the k chunks whole: the ceiling of any choice of units",
}


def _joined(before: str, unit: str) -> str:
    """Two units of one chunk as one text: the lines they share (heading, table header) once, then both bodies."""
    first, second = before.split("\n"), unit.split("\n")
    shared = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
    return "\n".join(first + second[shared:])


def unit_choices(encoder: Encoder, queries: list[str], chunks: list[list[tuple[Chunk, float]]],
                 headed: bool, bank: UnitQuestions) -> dict[str, list[list[str]]]:
    """What each way of choosing units (UNIT_CHOICES) would show for each query, given its top-k (chunk, score)
    pairs and the train questions attached to units (`bank`): the texts only, for measuring context recall side by
    side (`retrieval.unit_choices`)."""
    candidates = [[(rank, score, j, units) for rank, (chunk, score) in enumerate(row)
                   for units in [chunk_units(chunk.text, headed)] for j in range(len(units))] for row in chunks]
    distinct = list(dict.fromkeys(units[j] for row in candidates for *_, j, units in row))
    if not distinct:
        return {name: [[] for _ in queries] for name in UNIT_CHOICES}
    vectors = dict(zip(distinct, encoder.encode(distinct)))
    queried = encoder.encode(queries)
    attached = _attached_similarity(encoder, queried, distinct, bank)
    column = {unit: i for i, unit in enumerate(distinct)}
    out: dict[str, list[list[str]]] = {name: [] for name in UNIT_CHOICES}
    for qi, (row, query, hits) in enumerate(zip(candidates, queried, chunks)):
        out["whole chunks"].append([chunk.text for chunk, _ in hits])
        if not row:
            for name in UNIT_CHOICES:
                if name != "whole chunks":
                    out[name].append([])
            continue
        cosine = np.array([vectors[units[j]] @ query for *_, j, units in row])
        order = np.argsort(-cosine, kind="stable")
        _, _, j, units = row[order[0]]
        out["best unit"].append([units[j]])
        out["best two units"].append([row[i][3][row[i][2]] for i in order[:2]])
        out["best unit and the one before it"].append([_joined(units[j - 1], units[j]) if j > 0 else units[j]])
        first = [i for i in order if row[i][0] == 0]
        out["best unit of the first chunk"].append([row[first[0]][3][row[first[0]][2]]] if first else [])
        combined = cosine + np.array([score for _, score, *_ in row])
        best = int(np.argmax(combined))
        out["best unit, chunk score added"].append([row[best][3][row[best][2]]])
        expanded = cosine + bank.weight * np.array([attached[qi, column[units[j]]] for *_, j, units in row])
        best = int(np.argmax(expanded))
        out["best unit, train questions attached"].append([row[best][3][row[best][2]]])
    return out


def contexts(chunks: list[list[Chunk]], encoder: Encoder, queries: list[str], units: int | None,
             headed: bool, bank: UnitQuestions | None = None) -> list[list[tuple[str, str]]]:
    """What a reader is shown for each query: its chunks whole, or with `units` the best sentences/rows of them."""
    whole = [[(c.id, c.text) for c in row] for row in chunks]
    return whole if units is None else select_units(encoder, queries, whole, units, headed, bank)


def chunk_corpus(corpus: Corpus, encoder: Encoder, size: int, overlap: int, chunking: str = "section") -> list[Chunk]:
    if chunking == "window":
        return [c for d in corpus.documents
                for c in chunk_document(d.path, d.text, encoder.token_spans(d.text), size, overlap)]
    return [c for d in corpus.documents for c in chunk_sections(d.path, d.text, encoder.token_spans, size)]


RETRIEVERS = ("dense", "bm25", "hybrid")
RRF_K = 60  # the constant of Cormack et al. (2009): fused score = sum over rankings of 1 / (RRF_K + rank)
WORD = re.compile(r"[a-z0-9]+(?:[.,:][0-9]+)*")


def words(text: str) -> list[str]:
    """BM25's tokens: lowercase words and numbers (so "T5" and "620" are terms), nothing stemmed."""
    return WORD.findall(text.lower())


class Index:
    """Chunks plus a FAISS inner-product index over their normalised embeddings (inner product = cosine), searched
    with `retriever` (see the module docstring)."""

    def __init__(self, chunks: list[Chunk], vectors: np.ndarray | None = None, faiss_index=None,
                 retriever: str = "dense"):
        if retriever not in RETRIEVERS:
            raise ValueError(f"unknown retriever {retriever!r}; one of {', '.join(RETRIEVERS)}")
        self.chunks = chunks
        if faiss_index is None:
            faiss_index = faiss.IndexFlatIP(vectors.shape[1])
            faiss_index.add(np.ascontiguousarray(vectors, dtype="float32"))
        self.faiss = faiss_index
        self.retriever = retriever
        self._bm25 = None

    def using(self, retriever: str) -> "Index":
        """The same chunks and vectors, searched with another retriever."""
        return Index(self.chunks, faiss_index=self.faiss, retriever=retriever)

    @classmethod
    def build(cls, corpus: Corpus, encoder: Encoder, size: int, overlap: int, chunking: str = "section") -> "Index":
        chunks = chunk_corpus(corpus, encoder, size, overlap, chunking)
        return cls(chunks, encoder.encode([c.text for c in chunks]))

    def save(self, folder: Path, meta: dict | None = None) -> None:
        """The chunk table, the FAISS index and `meta` (meta.json: which encoder embedded the chunks) written
        together: into a temporary folder that then replaces `folder`, so an interrupted save never leaves a table
        of one run beside the vectors of another."""
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        atomic_write_jsonl(tmp / "chunks.jsonl", [asdict(c) for c in self.chunks])
        atomic_write_bytes(tmp / "faiss.index", faiss.serialize_index(self.faiss).tobytes())
        atomic_write_json(tmp / "meta.json", meta or {})
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

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
        """Top-k chunks for each query with their scores: cosine (dense), BM25 (bm25) or RRF (hybrid)."""
        if not queries:
            return []
        if self.retriever == "dense":
            ranked = self._dense(encoder, queries, k)
        elif self.retriever == "bm25":
            ranked = self._lexical(queries, k)
        else:
            depth = max(k, 50)
            ranked = [_fuse([dense, lexical])[:k]
                      for dense, lexical in zip(self._dense(encoder, queries, depth), self._lexical(queries, depth))]
        return [[(self.chunks[i], score) for i, score in row] for row in ranked]

    def _dense(self, encoder: Encoder, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        scores, ids = self.faiss.search(np.ascontiguousarray(encoder.encode(queries), dtype="float32"),
                                        min(k, len(self.chunks)))
        return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]

    def _lexical(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        import bm25s

        if self._bm25 is None:
            self._bm25 = bm25s.BM25()
            self._bm25.index([words(c.text) or ["\u0000"] for c in self.chunks], show_progress=False)
        ids, scores = self._bm25.retrieve([words(q) or ["\u0000"] for q in queries], k=min(k, len(self.chunks)),
                                          show_progress=False)
        # A zero score means no shared term: such chunks are not retrieved (their order would be arbitrary).
        return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if s > 0] for row_ids, row_scores in zip(ids, scores)]


def _fuse(rankings: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of several rankings of chunk positions, best first (ties: the lower position)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (i, _) in enumerate(ranking, start=1):
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


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


def evidence_unit(texts: list[str], gold: list[str], question: str, headed: bool) -> str | None:
    """The first sentence or table row of a fact's gold chunks (`texts`, in id order) that names its answer and
    that `question` does not already name (score.names_answer): what a reader should be shown for it."""
    from .score import names_answer

    return next((unit for text in texts for unit in chunk_units(text, headed) if names_answer([unit], gold, question)),
                None)


def gold_texts(facts, chunks: list[Chunk], documents) -> dict[str, list[str]]:
    """fact id -> the texts of its gold chunks, in id order: where its evidence unit is looked for."""
    text = {c.id: c.text for c in chunks}
    return {fid: [text[c] for c in sorted(gold.ids)] for fid, gold in gold_chunk_map(facts, chunks, documents).items()}


def evidence_units(facts, chunks: list[Chunk], documents, headed: bool) -> dict[str, str]:
    """fact id -> the evidence unit for its first train question, for the facts that have one: the text of the rag
    arm's worked reading examples (arms.reading_demos)."""
    gold = gold_texts(facts, chunks, documents)
    found = {f.id: evidence_unit(gold[f.id], list(f.gold), f.train_questions[0], headed)
             for f in facts if f.train_questions}
    return {fid: unit for fid, unit in found.items() if unit}


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
