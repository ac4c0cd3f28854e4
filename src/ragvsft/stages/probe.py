"""Stage `probe/<arm>`: ask every arm every question (probe.py). Each arm is its own cached stage: adding an arm or
changing k regenerates only the arms that read it, and an interrupted probe resumes at the arm it stopped in. The
arms in `gate.arms` also answer the development questions their decline threshold is calibrated on (gate.py), kept
apart in development.jsonl: they are never scored."""

from __future__ import annotations

import random
import time

from ..arms import RAG_ARMS, fewshot_pairs, reading_demos
from ..catalogue import ARMS, contrast_weight, model_of, uses
from ..config import Config
from ..corpus import Corpus
from ..files import atomic_write_jsonl, read_jsonl, sha256_json
from ..index import Encoder, Index, UnitQuestions, evidence_units
from ..probe import Question, development_facts, question_bank, retrieve, run_models, run_probe
from ..reader import fold_count, fold_of_question
from .cache import Run
from .reader import ReaderPlan


ROWS_VERSION = 2


def arm_key(cfg: Config, lm_hash: str, arm: str, sample: Corpus, questions: list, index_key: str, ft_key: str | None,
            reader_key: str | None = None, evidence: dict[str, str] | None = None,
            hidden: dict[str, tuple[str, ...]] | None = None, bank: UnitQuestions | None = None) -> str:
    """Exactly what generating one arm's answers reads (as the catalogue declares it): a changed statistic, alias or
    style marker only re-scores."""
    # The device only where it is not the CPU: an accelerator's arithmetic differs slightly; CPU keys stay as they were.
    # "rows": what an answer row records; 2 added each answer's log-probability (risk-coverage), so answers stored
    # without it are generated once more instead of leaving their arm out of the risk-coverage table.
    inputs = {"arm": arm, "rows": ROWS_VERSION, "lm": lm_hash, "dtype": cfg.models.dtype,
              **({"device": cfg.models.device} if cfg.models.device != "cpu" else {}),
              # Named adapters add the LoRA update beside the base instead of into its weights: other rounding.
              **({"adapters": cfg.models.adapters} if cfg.models.adapters != "merged" else {}),
              "questions": [[q.set, q.qid, q.question] for q in questions],
              "max_new_tokens": cfg.probe.max_new_tokens, "batch_size": cfg.probe.batch_size,
              "batch_tokens": cfg.probe.batch_tokens}
    if ARMS[arm].system_prompt:
        inputs["system_prompt"] = sample.style.system_prompt
    if ARMS[arm].examples:
        inputs["examples"] = [fewshot_pairs(sample, q.fact_id, cfg.probe.fewshot_k, cfg.seed, q.gold)
                              for q in questions]
    if ARMS[arm].demos and evidence and cfg.probe.rag_demos:
        inputs["demos"] = [reading_demos(sample, evidence, q.fact_id, cfg.probe.rag_demos, cfg.seed, q.gold)
                           for q in questions]
    if contrast_weight(arm, cfg.probe):
        inputs["contrast"] = contrast_weight(arm, cfg.probe)
        inputs["contrast_keeps"] = "headings"  # what the contrast keeps of the text shown (arms.without_context)
        if cfg.probe.contrast_plausibility:  # absent at 0: answers cached before the constraint existed stay valid
            inputs["plausibility"] = cfg.probe.contrast_plausibility
    if arm in RAG_ARMS:
        inputs |= {"index": index_key, "k": cfg.index.k, "context_units": cfg.index.context_units}
        if bank and bank.weight:  # absent at 0: answers shown units by their cosine alone stay valid
            inputs["unit_questions"] = [bank.weight, sorted([u, list(qs)] for u, qs in bank.by_unit.items())]
        mine = {q.qid: list(hidden[q.qid]) for q in questions if hidden and q.qid in hidden}
        if mine:  # what a silenced question is not shown follows its fact's answers
            inputs["hidden"] = mine
    if model_of(arm) == "closed_book":
        inputs["finetune"] = ft_key
    if model_of(arm) == "reader":
        inputs["reader"] = reader_key
    return sha256_json(inputs)


DEVELOPMENT = "development"  # the set name of the questions a gate is calibrated on
SILENCED = "silenced"  # the qid part of a development question asked with its answer taken out of retrieval


def is_silenced(qid: str) -> bool:
    """Whether a question id is a silenced development question's (`silenced_questions`)."""
    return f"/{SILENCED}/" in qid


def development_questions(cfg: Config, corpus: Corpus, sample: Corpus) -> list[Question]:
    """What the gated arms answer besides the probe: the first probe question of up to `gate.development_questions`
    facts the run does not score, as many unanswerable questions it does not ask, and silenced questions that top
    those up to `gate.silenced_questions` (`silenced_questions`), reproducible samples. None of them is a question
    the run scores (a test asserts it over the shipped profiles); a silenced question of a scored fact is only
    calibrated on by the other folds."""
    if not cfg.gated_arms:
        return []
    asked = {u.id for u in sample.unanswerable}
    unscored = [f for f in development_facts(corpus, sample) if f.probe_questions]
    unasked = [u for u in corpus.unanswerable if u.id not in asked]
    rng, n = random.Random(f"{cfg.seed}:gate-development"), cfg.gate.development_questions
    facts = sorted(rng.sample(unscored, n) if len(unscored) > n else unscored, key=lambda f: f.id)
    unasked = sorted(rng.sample(unasked, n) if len(unasked) > n else unasked, key=lambda u: u.id)
    return ([Question(DEVELOPMENT, f"{f.id}/{DEVELOPMENT}/0", f.probe_questions[0], f.id, tuple(f.gold)) for f in facts]
            + [Question(DEVELOPMENT, f"{u.id}/{DEVELOPMENT}/0", u.question, None, None) for u in unasked]
            + silenced_questions(cfg, corpus, sample, unscored, cfg.gate.silenced_questions - len(unasked)))


def silenced_questions(cfg: Config, corpus: Corpus, sample: Corpus, unscored: list, n: int) -> list[Question]:
    """Development questions made unanswerable: the first probe question of up to `n` facts, asked with every chunk
    that names the fact's answer taken out of retrieval (`hidden_answers`), so the arm is shown the nearest text that
    remains, as a real unanswerable question about a documented topic is. Gold None: the right answer is a decline.
    The facts the run does not score (`unscored`, those with a probe question) and, where it cross-fits several
    folds, its scored facts too (a fold never calibrates on its own facts' rows, gate.calibrate)."""
    if n <= 0:
        return []
    facts = list(unscored)
    if fold_count(corpus, sample, cfg.reader) > 1:
        facts += [f for f in sample.facts if f.probe_questions]
    rng = random.Random(f"{cfg.seed}:gate-silenced")
    facts = sorted(rng.sample(facts, n) if len(facts) > n else facts, key=lambda f: f.id)
    return [Question(DEVELOPMENT, f"{f.id}/{SILENCED}/0", f.probe_questions[0], f.id, None) for f in facts]


def hidden_answers(corpus: Corpus, questions: list[Question]) -> dict[str, tuple[str, ...]]:
    """qid -> the answers whose chunks a silenced question never retrieves (its fact's answer and aliases)."""
    gold = {f.id: tuple(f.gold) for f in corpus.facts}
    return {q.qid: gold[q.fact_id] for q in questions if is_silenced(q.qid)}


def _split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(probe rows, development rows): only the former are scored."""
    return [r for r in rows if r["set"] != DEVELOPMENT], [r for r in rows if r["set"] == DEVELOPMENT]


def stage(run: Run, corpus: Corpus, sample: Corpus, index: Index, encoder: Encoder, model, tokenizer, questions: list,
          index_key: str, ft_key: str | None, reader: ReaderPlan | None) -> tuple[list[dict], list[dict]]:
    """predictions.jsonl's rows, arm by arm in the config's order (unscored: scoring reads the current gold), and the
    gated arms' answers to the development questions (development.jsonl)."""
    cfg = run.cfg
    path, dev_path = run.run_dir / "predictions.jsonl", run.run_dir / "development.jsonl"
    stored = (read_jsonl(path) if path.is_file() else []) + (read_jsonl(dev_path) if dev_path.is_file() else [])
    by_arm = {arm: [r for r in stored if r["arm"] == arm] for arm in cfg.probe.arms}
    development = development_questions(cfg, corpus, sample)
    hidden = hidden_answers(corpus, development)
    asked = {arm: questions + (development if arm in cfg.gated_arms else []) for arm in cfg.probe.arms}
    evidence = evidence_units(sample.facts, index.chunks, corpus.documents, cfg.index.headed)
    bank = question_bank(cfg, corpus, index.chunks)
    keys = {arm: arm_key(cfg, run.hashes["lm"], arm, sample, asked[arm], index_key, ft_key, reader and reader.key,
                         evidence, hidden, bank) for arm in cfg.probe.arms}
    todo = [arm for arm in cfg.probe.arms
            if not (len(by_arm[arm]) == len(asked[arm]) and run.records.fresh(f"probe/{arm}", keys[arm], path))]
    models: dict = {}
    folds = ({q.qid: fold_of_question(q.qid, q.fact_id, reader.folds) for q in questions + development}
             if reader else None)
    if todo:
        run.log(f"probe: preparing the models the arms use ({', '.join(dict.fromkeys(model_of(a) for a in todo))})"
                + (" and retrieving for every question" if any(arm in RAG_ARMS for arm in todo) else ""))
        models = run_models(run.run_dir, model, {m for m in ("base", "closed_book", "reader") if uses(todo, m)},
                            len(reader.folds) if reader else 0, cfg.models.dtype, cfg.models.device,
                            cfg.models.adapters, cfg.reader.abstain_by == "head")
        needs_k = any(arm in RAG_ARMS for arm in todo)
        retrieved = (retrieve(index, encoder, questions + development, cfg.index.k, cfg.index.context_units,
                              cfg.index.headed, hidden, bank) if needs_k else {})
        run.log(f"probe: {len(questions)} questions x {len(todo)} arms ({', '.join(todo)})"
                + (f", and {len(development)} development questions for the gated arms" if development else ""))
    seconds = 0.0
    for arm in cfg.probe.arms:
        began = time.perf_counter()

        def ask(_, arm=arm):
            by_arm[arm] = run_probe(models, tokenizer, sample, asked[arm], retrieved,
                                    cfg.probe.model_copy(update={"arms": [arm]}), cfg.seed, run.log, folds, evidence)
            # Written after every arm, so a stopped probe keeps the arms it finished.
            probed, developed = _split([r for a in cfg.probe.arms for r in by_arm[a]])
            atomic_write_jsonl(dev_path, developed)
            atomic_write_jsonl(path, probed)

        if arm in todo:  # an arm whose rows are missing is asked again whatever its record says
            run.compute(f"probe/{arm}", keys[arm], None, ask)
        seconds += run.records.seconds(f"probe/{arm}", round(time.perf_counter() - began, 2))
    run.timings["probe"] = round(seconds, 2)
    run.reused_arms = [arm for arm in cfg.probe.arms if arm not in todo]
    if not todo:
        run.reused.append("probe")
    return _split([r for a in cfg.probe.arms for r in by_arm[a]])
