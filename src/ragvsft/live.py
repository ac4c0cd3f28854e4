"""Live questions against a finished run: every arm answers one typed question, side by side.

    ragvsft ask runs/quick "How heavy a load can a Tern T3 carry?"

Loads the run's resolved config, index and LoRA adapter, so the answers are the run's arms, not new ones. When the
question is one of the run's probe questions, each answer also gets its verdict.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError
from rich.columns import Columns
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from .catalogue import label, model_of
from .config import Config
from .corpus import Corpus, load_corpus
from .files import InputError, read_jsonl, require_complete_run
from .index import Index, evidence_units
from .embedder import run_encoder
from .models import load_lm, resolve_adapters, resolve_device
from . import gate
from .probe import Question, question_bank, retrieve, run_models, run_probe, score_rows
from .reader import fold_of_question
from .score import normalize

VERDICT_STYLES = {"correct": "green", "hallucinated": "red", "abstained": "grey50", None: "blue"}


@dataclass
class Session:
    run_dir: Path
    config: Config
    corpus: Corpus
    index: Index
    encoder: object
    tokenizer: object
    models: dict
    known: dict[str, Question]
    reader_folds: list[list[str]]
    gate: dict  # results.json `gate`: the thresholds the run chose for its gated arms ({} when none)

    @classmethod
    def open(cls, run_dir: Path | str, encoder=None, arms: list[str] | None = None) -> "Session":
        """Load a finished run; InputError names what is missing, and `arms` not in the run, before any model loads.
        `encoder` replaces the configured embedder (tests)."""
        run_dir = Path(run_dir)
        config_path = run_dir / "config.yaml"
        require_complete_run(run_dir)
        try:
            config = Config.model_validate(yaml.safe_load(config_path.read_text(encoding="utf-8")))
        except (ValidationError, yaml.YAMLError) as exc:
            # A key the run did not record is not filled with today's default: the run may have been made under another.
            missing = [".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "missing"] \
                if isinstance(exc, ValidationError) else []
            detail = (f"it lacks {', '.join(missing[:6])}: made by an older ragvsft; run the experiment again" if missing
                      else str(exc).splitlines()[0][:120])
            raise InputError([f"{config_path}:1: not the config of a ragvsft run ({detail})"]) from None
        unknown = [a for a in arms or [] if a not in config.probe.arms]
        if unknown:
            raise InputError([f"--arms: {', '.join(unknown)} not in this run (arms: {', '.join(config.probe.arms)})"])
        # The run's own sample: few-shot examples are drawn from its facts, so a probe question gets the same prompt.
        corpus = config.sample_of(load_corpus(config.corpus))
        model, tokenizer = load_lm(config.models.lm, "float32")
        # Where the run ran if that device is here, else wherever this machine can (cuda, mps, cpu).
        device = config.models.device if config.models.device == "cpu" else resolve_device("auto")
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        reader = results.get("reader") or {}
        folds = reader.get("fold_facts") or []
        wanted = {"base"} | ({"closed_book"} if (run_dir / "adapter").is_dir() else set()) \
            | ({"reader"} if folds and all((run_dir / "reader" / f"fold-{i}").is_dir() for i in range(len(folds)))
               else set())
        models = run_models(run_dir, model, wanted, len(folds), config.models.dtype, device,
                            resolve_adapters(config.models.adapters, device), config.reader.abstain_by == "head")
        known = {}
        for row in read_jsonl(run_dir / "predictions.jsonl"):
            known[normalize(row["question"])] = Question(row["set"], row["qid"], row["question"], row["fact_id"],
                                                         tuple(row["gold"]) if row["gold"] else None)
        index = Index.load(run_dir / "index").using(config.index.retriever)
        return cls(run_dir, config, corpus, index, encoder or run_encoder(run_dir, config.models.embedder),
                   tokenizer, models, known, folds, results.get("gate") or {})

    @functools.cached_property
    def evidence(self) -> dict[str, str]:
        """The rag arm's worked reading examples' units (index.evidence_units), read off the run's index once."""
        return evidence_units(self.corpus.facts, self.index.chunks, self.corpus.documents, self.config.index.headed)

    @functools.cached_property
    def bank(self):
        """The train questions attached to units (index.UnitQuestions): every fact's, as the run's probe had them."""
        return question_bank(self.config, load_corpus(self.config.corpus), self.index.chunks)

    @property
    def arms(self) -> list[str]:
        return [a for a in self.config.probe.arms if model_of(a) in self.models]

    def examples(self, n: int = 6) -> list[str]:
        """A few probe questions to click: held-out ones first, then an unanswerable one."""
        held = [q.question for q in self.known.values() if q.set == "heldout"]
        unanswerable = [q.question for q in self.known.values() if q.set == "unanswerable"]
        return held[: n - 1] + unanswerable[:1]

    def ask(self, question: str, arms: list[str] | None = None) -> dict:
        """Every requested arm's answer, with verdicts when the question is a probe question."""
        unknown = [a for a in arms or [] if a not in self.arms]
        if unknown:
            raise InputError([f"--arms: {', '.join(unknown)} not in this run (arms: {', '.join(self.arms)})"])
        probe_question = self.known.get(normalize(question))
        asked = probe_question or Question("live", "live/0", question, None, ())
        index = self.config.index
        retrieved = retrieve(self.index, self.encoder, [asked], index.k, index.context_units, index.headed,
                             bank=self.bank)
        cfg = self.config.probe.model_copy(update={"arms": arms or self.arms, "batch_size": 1})
        folds = self.reader_folds if "reader" in self.models else None
        route = {asked.qid: fold_of_question(asked.qid, asked.fact_id, folds)} if folds else None
        rows = run_probe(self.models, self.tokenizer, self.corpus, [asked], retrieved, cfg, self.config.seed,
                         reader_fold=route, evidence=self.evidence)
        self._gated(rows, asked)
        for row in rows:
            if probe_question is None:
                row["verdict"] = None  # no gold answer for a question outside the probe
            row["arm_label"] = label(row["arm"])
        return {"question": question, "set": probe_question.set if probe_question else None,
                "gold": list(probe_question.gold) if probe_question and probe_question.gold else None,
                "answers": rows, "chunks": [{"id": cid, "text": text} for cid, text in retrieved[asked.qid].shown]}


    def _gated(self, rows: list[dict], asked: Question) -> None:
        """The gated arms decline as they did in the run: its fitted gates, for the question's fold (gate.py)."""
        gates = {arm: figures["folds"] for arm, figures in (self.gate.get("arms") or {}).items()}
        if not gates:
            return
        folds = self.gate.get("fold_facts") or [[]]
        style = self.corpus.style
        gate.prepare(rows, list(gates), list(style.markers), self.encoder, {c.id: c.text for c in self.index.chunks},
                     self.config.index.headed, self.gate.get("signals", gate.SIGNALS))
        gate.apply(rows, gates, {asked.qid: fold_of_question(asked.qid, asked.fact_id, folds)},
                   style.abstain_template, self.corpus.abstain_phrases)
        score_rows(rows, [asked], self.corpus)


def render_answers(console: Console, result: dict) -> None:
    """The arms' answers as panels side by side, then the retrieved chunks."""
    header = Text(f"Q: {result['question']}", style="bold")
    if result["set"]:
        header.append(f"   (probe set: {result['set']}; gold: {' / '.join(result['gold']) if result['gold'] else 'abstain'})",
                      style="italic")
    console.print(header)
    panels = []
    for row in result["answers"]:
        verdict = row["verdict"] or "no gold answer"
        subtitle = f"{verdict} · {row['seconds']:.2f} s · {row['prompt_tokens']}+{row['generated_tokens']} tokens"
        panels.append(Panel(Text(row["answer"]), title=row["arm_label"], subtitle=subtitle,
                            border_style=VERDICT_STYLES.get(row["verdict"], "blue"), width=44))
    console.print(Columns(panels))
    for chunk in result["chunks"]:
        console.print(Panel(Text(chunk["text"].strip()), title=f"retrieved: {chunk['id']}", border_style="dim"))
