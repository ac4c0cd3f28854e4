"""Corpus loading and validation: documents, facts, unanswerable questions and the house style.

    ragvsft corpus check corpus      # exit 0 and a one-line summary, or every error as file:line: message, exit 2
    ragvsft corpus stats corpus      # documents by kind, words, facts, questions per set, facts per document

The format is a user-facing contract (README, "Bring your own corpus"). Every rule is checked and all problems are
reported together; nothing is written by loading.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import regex

from .files import InputError, load_yaml_with_lines, sha256_tree
from .score import ABSTENTION_PHRASES, MARKER_SECONDS, follows_style, marker_matches, matches_gold, normalize

DOCUMENT_SUFFIXES = (".md", ".txt")
FACT_KEYS = {"id", "statement", "answer", "aliases", "document", "evidence", "train_questions", "probe_questions",
             "reverse", "tags"}
FACT_REQUIRED = FACT_KEYS - {"reverse", "tags", "aliases"}
REVERSE_KEYS = {"questions", "answer", "aliases"}
UNANSWERABLE_KEYS = {"id", "question"}
UPDATE_KEYS = {"id", "answer", "aliases", "statement", "evidence"}
UPDATE_REQUIRED = UPDATE_KEYS - {"aliases"}
CORPUS_KEYS = {"name", "organisation", "description", "style"}
STYLE_KEYS = {"system_prompt", "answer_template", "abstain_template", "markers"}


@dataclass(frozen=True)
class Style:
    """The house style: what prompting asks for and what fine-tuning targets look like."""

    system_prompt: str
    answer_template: str
    abstain_template: str
    markers: tuple[str, ...]

    def answer(self, statement: str) -> str:
        return self.answer_template.replace("{statement}", statement)


@dataclass(frozen=True)
class Document:
    path: str  # relative to the corpus folder, POSIX separators
    text: str

    @property
    def kind(self) -> str:
        """The first folder under documents/ ("policies", "products", ...), or "other"."""
        parts = PurePosixPath(self.path).parts
        return parts[1] if len(parts) > 2 else "other"


@dataclass(frozen=True)
class Reverse:
    questions: tuple[str, ...]
    answer: str
    aliases: tuple[str, ...] = ()

    @property
    def gold(self) -> list[str]:
        return [self.answer, *self.aliases]


@dataclass(frozen=True)
class Fact:
    id: str
    statement: str
    answer: str
    aliases: tuple[str, ...]
    document: str
    evidence: str
    train_questions: tuple[str, ...]
    probe_questions: tuple[str, ...]
    reverse: Reverse | None = None
    tags: tuple[str, ...] = ()
    line: int = 0

    @property
    def gold(self) -> list[str]:
        return [self.answer, *self.aliases]


@dataclass(frozen=True)
class Unanswerable:
    id: str
    question: str
    line: int = 0


@dataclass(frozen=True)
class Update:
    """A changed fact (updates/facts.jsonl): its new answer, aliases, statement and evidence; questions stay."""

    id: str
    answer: str
    aliases: tuple[str, ...]
    statement: str
    evidence: str
    line: int = 0

    @property
    def gold(self) -> list[str]:
        return [self.answer, *self.aliases]


@dataclass(frozen=True)
class Corpus:
    root: Path
    name: str
    organisation: str
    description: str
    style: Style
    documents: tuple[Document, ...]
    facts: tuple[Fact, ...]
    unanswerable: tuple[Unanswerable, ...]
    sha256: str = field(default="", compare=False)
    updates: tuple[Update, ...] = ()  # the optional updates/ part: changed facts ...
    updated_documents: tuple[Document, ...] = ()  # ... and the new versions of their documents
    updates_sha256: str = field(default="", compare=False)  # apart, so an edit there leaves the main stages fresh

    def updated(self) -> "Corpus":
        """The corpus after its updates: new document versions replace the old, changed facts get their new answer,
        aliases, statement and evidence (their questions stay). No updates: the corpus itself."""
        if not self.updates:
            return self
        new_docs = {d.path: d for d in self.updated_documents}
        changes = {u.id: u for u in self.updates}
        facts = tuple(replace(f, answer=changes[f.id].answer, aliases=changes[f.id].aliases,
                              statement=changes[f.id].statement, evidence=changes[f.id].evidence)
                      if f.id in changes else f for f in self.facts)
        return replace(self, documents=tuple(new_docs.get(d.path, d) for d in self.documents), facts=facts,
                       updates=(), updated_documents=())

    @property
    def abstain_phrases(self) -> list[str]:
        return [self.style.abstain_template.replace("{statement}", ""), *ABSTENTION_PHRASES] + _core_abstention(self.style)

    def subset(self, facts: int | None, unanswerable: int | None, seed: int, keep: frozenset[str] = frozenset()) -> "Corpus":
        """A reproducible sample of facts and unanswerable questions (documents stay complete, so retrieval still
        searches the whole corpus). None keeps everything. Facts whose id is in `keep` are always in it (the
        update experiment's changed facts), the rest drawn at random up to `facts`."""
        rng = random.Random(seed)

        def pick(items: tuple, n: int | None, kept: frozenset = frozenset()) -> tuple:
            if n is None or n >= len(items):
                return items
            pool = [i for i, x in enumerate(items) if getattr(x, "id", None) not in kept]
            chosen = set(rng.sample(pool, max(0, n - (len(items) - len(pool)))))  # without `keep`: as sample(range(n))
            return tuple(x for i, x in enumerate(items) if i in chosen or getattr(x, "id", None) in kept)

        return replace(self, facts=pick(self.facts, facts, keep), unanswerable=pick(self.unanswerable, unanswerable))


def _backtracks(marker: str) -> bool:
    """Whether the marker runs out of time on short texts built from its own literal characters: each prefix of
    them, then one character repeated, then one that breaks the match — the shape on which nested repetition
    ((a+)+, (x+x+)+y) takes exponential time."""
    literal = "".join(c for c in marker if c.isalnum() or c in " !-.,'—")
    for i in range(len(literal) + 1):
        for c in sorted(set(literal) | {"a", " ", "0"}):
            try:
                marker_matches(marker, literal[:i] + c * 48 + "\x00")
            except TimeoutError:
                return True
    return False


def _core_abstention(style: Style) -> list[str]:
    """The abstain template without the house-style markers, e.g. "I can't find that in our documents."."""
    core = style.abstain_template
    for marker in style.markers:
        core = regex.sub(marker, "", core, flags=regex.MULTILINE, timeout=MARKER_SECONDS)
    core = core.strip()
    return [core] if core else []


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: Path | str, line: int, message: str) -> None:
        self.items.append(f"{path}:{line}: {message}")

    def keys(self, path: Path | str, line: int, mapping: dict, allowed: set, required: set, prefix: str = "",
             key_lines: dict | None = None) -> bool:
        """Report unknown and missing keys of `mapping`; True when every required key is there."""
        for key in sorted(set(mapping) - allowed, key=str):
            self.add(path, (key_lines or {}).get(key, line), f"unknown key '{prefix}{key}'")
        for key in sorted(required - set(mapping)):
            self.add(path, line, f"missing key '{prefix}{key}'")
        return required <= set(mapping)


def _read_text(path: Path, problems: _Problems) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.add(path, 0, f"cannot read: {exc.strerror}")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.add(path, line, f"not valid UTF-8 (byte {exc.start})")
        return None


def _check_string_list(value, name: str, path: Path, line: int, problems: _Problems, minimum: int = 0) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) and x.strip() for x in value):
        problems.add(path, line, f"'{name}' must be a list of non-empty strings")
        return ()
    if len(value) < minimum:
        problems.add(path, line, f"'{name}' needs at least {minimum} entr{'y' if minimum == 1 else 'ies'}")
    return tuple(value)


def _read_jsonl(path: Path, problems: _Problems) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; bad lines are reported and skipped."""
    text = _read_text(path, problems)
    if text is None:
        return []
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(path, number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            problems.add(path, number, "nested too deeply to be a fact")
            continue
        if not isinstance(obj, dict):
            problems.add(path, number, "each line must be a JSON object")
            continue
        rows.append((number, obj))
    if not rows and not any(p.startswith(f"{path}:") for p in problems.items):
        problems.add(path, 1, "file is empty")
    return rows


def _load_style(path: Path, data: dict, lines: dict, problems: _Problems) -> Style | None:
    style = data.get("style")
    line = lines.get(("style",), 1)
    if not isinstance(style, dict):
        problems.add(path, line, "'style' must be a mapping with keys " + ", ".join(sorted(STYLE_KEYS)))
        return None
    key_lines = {key: lines[("style", key)] for key in style if ("style", key) in lines}
    if not problems.keys(path, line, style, STYLE_KEYS, STYLE_KEYS, "style.", key_lines):
        return None
    for key in ("system_prompt", "answer_template", "abstain_template"):
        if not isinstance(style[key], str) or not style[key].strip():
            problems.add(path, lines.get(("style", key), line), f"'style.{key}' must be a non-empty string")
            return None
    if "{statement}" not in style["answer_template"]:
        problems.add(path, lines.get(("style", "answer_template"), line), "'style.answer_template' must contain {statement}")
    markers = style["markers"]
    if not isinstance(markers, list) or not markers or not all(isinstance(m, str) for m in markers):
        problems.add(path, lines.get(("style", "markers"), line), "'style.markers' must be a non-empty list of regexes")
        return None
    for marker in markers:
        if not marker.strip():
            problems.add(path, lines.get(("style", "markers"), line), "an empty marker matches every answer; remove it")
            return None
        try:
            regex.compile(marker, flags=regex.MULTILINE)
        except regex.error as exc:
            problems.add(path, lines.get(("style", "markers"), line), f"marker {marker!r} is not a valid regex: {exc}")
            return None
        if _backtracks(marker):
            problems.add(path, lines.get(("style", "markers"), line),
                         f"marker {marker!r} backtracks without end on a short answer (more than "
                         f"{MARKER_SECONDS:g} s); write it without nested repetition such as (a+)+")
            return None
    result = Style(style["system_prompt"], style["answer_template"], style["abstain_template"], tuple(markers))
    for key, sample in (("answer_template", result.answer("The answer is 42.")), ("abstain_template", result.abstain_template)):
        if not follows_style(sample, list(markers)):
            problems.add(path, lines.get(("style", key), line), f"'style.{key}' does not match every marker in 'style.markers'")
    return result


def _load_documents(root: Path, problems: _Problems) -> dict[str, Document]:
    folder = root / "documents"
    if not folder.is_dir():
        problems.add(folder, 0, "missing folder: put the internal documents (*.md, *.txt) here")
        return {}
    documents = {}
    inside = root.resolve()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if not path.resolve().is_relative_to(inside):
            problems.add(path, 0, "a link to a file outside the corpus folder; copy the document in instead")
            continue
        text = _read_text(path, problems)
        if text is None:
            continue
        if not text.strip():
            problems.add(path, 1, "document is empty")
            continue
        rel = path.relative_to(root).as_posix()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:  # a name in another encoding (undecodable bytes): it could not be written to JSON
            shown = Path(str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
            problems.add(shown, 0, "the file name is not valid UTF-8; rename the file")
            continue
        documents[rel] = Document(rel, text)
    if not documents and not problems.items:
        problems.add(folder, 0, "no documents (*.md or *.txt) found")
    return documents


def _document_path_problem(value: str, root: Path) -> str | None:
    pure = PurePosixPath(value)
    if pure.is_absolute() or value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        return "must be a path relative to the corpus folder, not an absolute path"
    if ".." in pure.parts or "\\" in value:
        return "must stay inside the corpus folder (no '..' and no backslashes)"
    resolved = (root / value).resolve()
    if not resolved.is_relative_to(root.resolve()):
        return "must stay inside the corpus folder"
    return None


def _load_facts(root: Path, documents: dict[str, Document], problems: _Problems) -> list[Fact]:
    path = root / "facts.jsonl"
    facts = []
    for number, obj in _read_jsonl(path, problems):
        if not problems.keys(path, number, obj, FACT_KEYS, FACT_REQUIRED):
            continue
        before = len(problems.items)
        for key in ("id", "statement", "answer", "document", "evidence"):
            if not isinstance(obj[key], str) or not obj[key].strip():
                problems.add(path, number, f"'{key}' must be a non-empty string")
        if len(problems.items) > before:
            continue
        aliases = _check_string_list(obj.get("aliases", []), "aliases", path, number, problems)
        train = _check_string_list(obj["train_questions"], "train_questions", path, number, problems, minimum=1)
        probe = _check_string_list(obj["probe_questions"], "probe_questions", path, number, problems, minimum=1)
        tags = _check_string_list(obj.get("tags", []), "tags", path, number, problems)
        reverse = None
        if "reverse" in obj:
            rev = obj["reverse"]
            if not isinstance(rev, dict):
                problems.add(path, number, "'reverse' must be an object with 'questions', 'answer' and optional 'aliases'")
            else:
                problems.keys(path, number, rev, REVERSE_KEYS, set(), "reverse.")
                if not isinstance(rev.get("answer"), str) or not rev.get("answer", "").strip():
                    problems.add(path, number, "'reverse.answer' must be a non-empty string")
                else:
                    reverse = Reverse(
                        _check_string_list(rev.get("questions"), "reverse.questions", path, number, problems, minimum=1),
                        rev["answer"],
                        _check_string_list(rev.get("aliases", []), "reverse.aliases", path, number, problems))
        where = _document_path_problem(obj["document"], root)
        if where:
            problems.add(path, number, f"'document' {obj['document']!r} {where}")
        elif obj["document"] not in documents:
            if (root / obj["document"]).is_file() and not obj["document"].endswith(DOCUMENT_SUFFIXES):
                problems.add(path, number, f"'document' {obj['document']!r} must be a .md or .txt file under documents/")
            elif not any(p.startswith(f"{root / obj['document']}:") for p in problems.items):
                problems.add(path, number, f"'document' {obj['document']!r} does not exist in the corpus folder")
        elif " ".join(obj["evidence"].split()) not in " ".join(documents[obj["document"]].text.split()):
            problems.add(path, number, f"'evidence' {obj['evidence']!r} does not occur in {obj['document']}")
        fact = Fact(obj["id"], obj["statement"], obj["answer"], aliases, obj["document"], obj["evidence"],
                    train, probe, reverse, tags, number)
        if not matches_gold(fact.statement, fact.gold):
            problems.add(path, number, "neither 'answer' nor any alias occurs in 'statement'")
        for question in (*train, *probe):
            if matches_gold(question, fact.gold):
                problems.add(path, number, f"question {question!r} already contains the answer")
        if reverse is not None:
            for question in reverse.questions:
                if matches_gold(question, reverse.gold):
                    problems.add(path, number, f"reverse question {question!r} already contains its answer")
        facts.append(fact)
    return facts


def _load_unanswerable(root: Path, problems: _Problems) -> list[Unanswerable]:
    path = root / "unanswerable.jsonl"
    items = []
    for number, obj in _read_jsonl(path, problems):
        if not problems.keys(path, number, obj, UNANSWERABLE_KEYS, UNANSWERABLE_KEYS):
            continue
        if not all(isinstance(obj[k], str) and obj[k].strip() for k in UNANSWERABLE_KEYS):
            problems.add(path, number, "'id' and 'question' must be non-empty strings")
            continue
        items.append(Unanswerable(obj["id"], obj["question"], number))
    return items


def _check_across(root: Path, facts: list[Fact], unanswerable: list[Unanswerable], problems: _Problems) -> None:
    seen: dict[str, str] = {}
    for file, items in (("facts.jsonl", facts), ("unanswerable.jsonl", unanswerable)):
        for item in items:
            if item.id in seen:
                problems.add(root / file, item.line, f"duplicate id {item.id!r} (first used at {seen[item.id]})")
            else:
                seen[item.id] = f"{file}:{item.line}"
    train = {}
    for fact in facts:
        for question in fact.train_questions:
            train.setdefault(normalize(question), fact.id)
    for fact in facts:
        for question in fact.probe_questions:
            if normalize(question) in train:
                problems.add(root / "facts.jsonl", fact.line,
                             f"probe question {question!r} equals a train question of fact {train[normalize(question)]!r}")
    for fact in facts:
        for question in fact.reverse.questions if fact.reverse else ():
            if normalize(question) in train:
                problems.add(root / "facts.jsonl", fact.line,
                             f"reverse question {question!r} equals a train question of fact {train[normalize(question)]!r}")
    for item in unanswerable:
        if normalize(item.question) in train:
            problems.add(root / "unanswerable.jsonl", item.line,
                         f"question {item.question!r} equals a train question of fact {train[normalize(item.question)]!r}")


def _load_updates(root: Path, documents: dict[str, Document], facts: list[Fact],
                  problems: _Problems) -> tuple[list[Update], dict[str, Document]]:
    """The optional updates/ part: updates/documents/ mirrors documents/ with new versions of changed documents, and
    updates/facts.jsonl holds one changed fact per line (id of a fact, new answer, aliases, statement, evidence)."""
    folder = root / "updates"
    if not folder.exists():
        return [], {}
    if not folder.is_dir():
        problems.add(folder, 0, "must be a folder holding documents/ and facts.jsonl")
        return [], {}
    new_docs = _load_documents(folder, problems) if (folder / "documents").is_dir() else {}
    for rel in new_docs:
        if rel not in documents:
            problems.add(folder / rel, 0, f"a new version of {rel}, which is not in the corpus (updates replace documents)")
    path = folder / "facts.jsonl"
    old = {f.id: f for f in facts}
    updates: list[Update] = []
    first_line: dict[str, int] = {}
    for number, obj in _read_jsonl(path, problems):
        if not problems.keys(path, number, obj, UPDATE_KEYS, UPDATE_REQUIRED):
            continue
        bad = [k for k in sorted(UPDATE_REQUIRED) if not isinstance(obj[k], str) or not obj[k].strip()]
        if bad:
            problems.add(path, number, ", ".join(f"'{k}'" for k in bad) + " must be non-empty strings")
            continue
        update = Update(obj["id"], obj["answer"], _check_string_list(obj.get("aliases", []), "aliases", path, number,
                                                                     problems), obj["statement"], obj["evidence"], number)
        if update.id in first_line:
            problems.add(path, number, f"duplicate id {update.id!r} (first changed at line {first_line[update.id]})")
            continue
        first_line[update.id] = number
        fact = old.get(update.id)
        if fact is None:
            problems.add(path, number, f"id {update.id!r} is not a fact in facts.jsonl")
            continue
        if not matches_gold(update.statement, update.gold):
            problems.add(path, number, "neither 'answer' nor any alias occurs in 'statement'")
        if any(matches_gold(g, fact.gold) for g in update.gold) or any(matches_gold(g, update.gold) for g in fact.gold):
            problems.add(path, number, f"the new answer {update.answer!r} cannot be told apart from the old "
                                       f"{fact.answer!r} (one matches the other's answer or aliases)")
        for question in (*fact.train_questions, *fact.probe_questions):
            if matches_gold(question, update.gold):
                problems.add(path, number, f"question {question!r} of fact {fact.id!r} already contains the new answer")
        document = new_docs.get(fact.document)
        if document is None:
            problems.add(path, number, f"the fact's document {fact.document} has no new version: add "
                                       f"updates/{fact.document} with the changed text")
        elif " ".join(update.evidence.split()) not in " ".join(document.text.split()):
            problems.add(path, number, f"'evidence' {update.evidence!r} does not occur in updates/{fact.document}")
        updates.append(update)
    for fact in facts:
        document = new_docs.get(fact.document)
        if fact.id not in first_line and document is not None and \
                " ".join(fact.evidence.split()) not in " ".join(document.text.split()):
            problems.add(path, 1, f"fact {fact.id!r} (facts.jsonl:{fact.line}) is not changed, but its evidence no longer "
                                  f"occurs in updates/{fact.document}; add its new version here")
    return updates, new_docs


def load_corpus(root: Path | str) -> Corpus:
    """Load and validate a corpus folder; raise InputError with every problem found."""
    root = Path(root)
    problems = _Problems()
    if not root.is_dir():
        raise InputError([f"{root}:0: corpus folder not found"])
    meta_path = root / "corpus.yaml"
    style = None
    meta: dict = {}
    try:
        meta, lines = load_yaml_with_lines(meta_path)
    except InputError as exc:
        problems.items.extend(exc.problems)
        lines = {}
    if problems.items:
        pass
    elif not isinstance(meta, dict):
        problems.add(meta_path, 1, "must be a mapping with keys " + ", ".join(sorted(CORPUS_KEYS)))
        meta = {}
    else:
        problems.keys(meta_path, 1, meta, CORPUS_KEYS, CORPUS_KEYS, key_lines={k: lines[(k,)] for k in meta if (k,) in lines})
        for key in sorted(CORPUS_KEYS - {"style"}):
            if key in meta and (not isinstance(meta[key], str) or not meta[key].strip()):
                problems.add(meta_path, lines.get((key,), 1), f"'{key}' must be a non-empty string")
        if "style" in meta:
            style = _load_style(meta_path, meta, lines, problems)
    documents = _load_documents(root, problems)
    facts = _load_facts(root, documents, problems)
    unanswerable = _load_unanswerable(root, problems)
    _check_across(root, facts, unanswerable, problems)
    updates, new_docs = _load_updates(root, documents, facts, problems)
    if problems.items:
        raise InputError(problems.items)
    assert style is not None
    files = [meta_path, root / "facts.jsonl", root / "unanswerable.jsonl", *(root / d for d in documents)]
    update_files = [root / "updates" / "facts.jsonl", *(root / "updates" / d for d in new_docs)] if updates else []
    return Corpus(root, meta["name"], meta["organisation"], meta["description"], style, tuple(documents.values()),
                  tuple(facts), tuple(unanswerable), sha256_tree(root, files), tuple(updates), tuple(new_docs.values()),
                  sha256_tree(root, update_files) if updates else "")


def corpus_stats(corpus: Corpus) -> dict:
    """Sizes a user checks before a run: documents by kind, words, facts, questions per set, facts per document."""
    words = [len(d.text.split()) for d in corpus.documents]
    per_document = Counter(f.document for f in corpus.facts)
    counts = [per_document.get(d.path, 0) for d in corpus.documents]
    return {
        "name": corpus.name,
        "documents": len(corpus.documents),
        "documents_by_kind": dict(sorted(Counter(d.kind for d in corpus.documents).items())),
        "words": {"total": sum(words), "min": min(words), "median": int(statistics.median(words)), "max": max(words)},
        "facts": len(corpus.facts),
        "questions": {
            "train": sum(len(f.train_questions) for f in corpus.facts),
            "heldout": sum(len(f.probe_questions) for f in corpus.facts),
            "reverse": sum(len(f.reverse.questions) for f in corpus.facts if f.reverse),
            "unanswerable": len(corpus.unanswerable),
        },
        "facts_with_reverse": sum(1 for f in corpus.facts if f.reverse),
        "facts_per_document": {"min": min(counts), "median": statistics.median(counts), "max": max(counts),
                               "without_facts": sum(1 for c in counts if c == 0)},
        "facts_by_document": dict(sorted(per_document.items())),
    }
