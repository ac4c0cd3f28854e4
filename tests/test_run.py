"""The experiment end to end with a tiny in-process model and a mock encoder: run folder, reuse, bad input."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import STYLE, tiny_config, write_corpus
from ragvsft.cli import app
from ragvsft.files import InputError, read_jsonl
from ragvsft.run import run_experiment

from ragvsft.catalogue import NAMES, RETRIEVING, contrast_weight

ARMS = list(NAMES)


def without_timings(results):
    results = dict(results)
    results.pop("timings")
    for figures in results["arms"].values():
        figures.pop("seconds_per_query")
    results["training"] = {k: v for k, v in results["training"].items()
                          if k not in ("seconds", "seconds_per_example", "tokens_per_second", "curve_seconds")}
    results["reader"] = {k: v for k, v in results["reader"].items() if k not in ("seconds", "seconds_per_example")}
    results["reader"]["head"] = [{k: v for k, v in h.items() if k != "seconds"} for h in results["reader"]["head"] or []]
    # claims that read timings, or costs (which include the training time), move with the machine
    results["claims"] = [c for c in results["claims"] if not any(w in (c["test"] or "") for w in ("seconds", "cost."))]
    results["config"] = {k: v for k, v in results["config"].items() if k != "out"}  # copies live elsewhere
    # the compute floor's work stays; what it took is a timing
    results["performance"] = dict(results["performance"], stages={
        stage: {k: v for k, v in f.items() if k not in ("seconds", "gflops", "share_of_peak")}
        for stage, f in results["performance"]["stages"].items()})
    return results


def test_run_folder_has_every_file(tiny_run):
    _, out = tiny_run
    for name in ("config.yaml", "finetune_set.jsonl", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
                 "adapter/training_log.json", "reader/fold-0/adapter_model.safetensors",
                 "reader/fold-1/training_log.json", "reader_set.jsonl", "index/faiss.index", "index/chunks.jsonl", "predictions.jsonl",
                 "results.json", "results.csv", "report.md", "report.html", "plots/rates_heldout.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp")) and not (out / ".adapter.tmp").exists() and not (out / ".trainer").exists()
    assert not (out / ".reader.tmp").exists()


def test_no_reader_ever_trains_on_a_fact_it_answers(tiny_run):
    _, out = tiny_run
    results = json.loads((out / "results.json").read_text())
    folds = results["reader"]["fold_facts"]
    assert len(folds) == 2 and sorted(sum(folds, [])) == ["meal", "payload", "portal", "security"]  # no subset: 2 folds
    training = read_jsonl(out / "reader_set.jsonl")
    for i, fold in enumerate(folds):
        trained = {r["fact_id"] for r in training if r["fold"] == i}
        assert trained and not trained & set(fold)
        asked = [r for r in read_jsonl(out / "predictions.jsonl") if r["arm"] == "raft" and r["reader_fold"] == i]
        assert {r["fact_id"] for r in asked if r["fact_id"]} <= set(fold)  # fold i's questions go to reader i only
    assert {r["target"] for r in training} & {"abstain", "distractors"}
    assert 0 <= results["reader"]["silent_abstained"] <= 1
    assert all(r["answer"] == STYLE["abstain_template"] for r in training if r["target"] != "answer")


def test_the_raft_arm_declines_where_its_head_finds_the_text_silent(tiny_run):
    _, out = tiny_run
    raft = [r for r in read_jsonl(out / "predictions.jsonl") if r["arm"] == "raft"]
    assert raft and all(0 <= r["answerable"] <= 1 and "reader_answer" in r for r in raft)
    for row in raft:  # a decline replaces the reader's answer; otherwise the reader's answer stands
        assert row["answer"] == (STYLE["abstain_template"] if row["answerable"] < 0.5 else row["reader_answer"])
    heads = json.loads((out / "results.json").read_text())["reader"]["head"]
    assert len(heads) == 2 and all(h["examples"] > h["answering"] > 0 for h in heads)
    assert all((out / "reader" / f"fold-{i}" / "head.json").is_file() for i in range(2))


def test_predictions_cover_every_arm_and_question(tiny_run):
    _, out = tiny_run
    rows = read_jsonl(out / "predictions.jsonl")
    assert len(rows) == len(ARMS) * (4 + 4 + 2 + 2)  # heldout, seen, reverse, unanswerable
    assert {r["arm"] for r in rows} == set(ARMS)
    for row in rows:
        assert row["verdict"] in {"correct", "hallucinated", "abstained"}
        assert (row["gold"] is None) == (row["set"] == "unanswerable")
        assert bool(row["retrieved"]) == (row["arm"] in RETRIEVING)
    fewshot = next(r for r in rows if r["arm"] == "fewshot")
    assert len(fewshot["messages"]) == 1 + 2 * 3 + 1


def test_results_keep_the_design_keys(tiny_run):
    _, out = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"corpus", "arms", "retrieval", "training", "timings"}
    # Every fact of the toy corpus is scored: no development data, and the readers train on the other fold's facts;
    # the gate calibrates on the silenced questions of all 4 (each fold on the other fold's).
    assert results["development"] == {"facts": 0, "train_questions": 0, "probe_questions": 0, "unanswerable_not_asked": 0,
                                      "embedder_tuned_on": 0, "reader_trained_on": 0, "unit_choices_measured_on": 0,
                                      "units_chosen_by_train_questions_of": 0,
                                      "gate_calibrated_on": {"facts": 0, "unanswerable": 0, "silenced": 4}}
    assert results["retrieval"]["unit_choices"]["whole chunks"]["used"]  # index.context_units: null
    assert list(results["arms"]) == ARMS
    rag = results["arms"]["rag"]
    for key in ("heldout", "seen", "unanswerable", "reverse", "style_adherence", "prompt_tokens_per_query",
                "generated_tokens_per_query", "seconds_per_query"):
        assert key in rag, key
    rates = {"n", "accuracy", "accuracy_ci", "hallucination_rate", "hallucination_rate_ci", "abstention_rate",
             "abstention_rate_ci"}
    context = {"context_recall", "context_recall_ci", "context_utilisation", "context_utilisation_ci", "shown_n"}
    selective = {"aurc", "selective_accuracy"}  # answerable sets only: pooled with the unanswerable questions
    assert set(rag["heldout"]) == rates | context | selective  # a retrieving arm: what it was shown, measured
    assert set(rag["unanswerable"]) == rates and set(results["arms"]["base"]["heldout"]) == rates | selective
    assert set(results["risk_coverage"]) == set(ARMS) and set(results["risk_coverage"]["rag"]) == {"heldout", "seen",
                                                                                                   "reverse"}
    assert 0 <= rag["style_adherence_ci"][0] <= rag["style_adherence"] <= rag["style_adherence_ci"][1] <= 1
    assert rag["prompt_tokens_per_query"] > results["arms"]["base"]["prompt_tokens_per_query"]
    assert set(results["retrieval"]) >= {"k", "recall_at", "mrr", "rag_errors"}
    assert results["training"]["examples"] == 5 and results["training"]["loss"]
    assert [p["epoch"] for p in results["curves"]] == [0.0, 1.0, 2.0]  # 2 epochs: before, after each
    assert set(results["curves"][0]) == {"epoch", "seen", "heldout", "unanswerable_hallucination", "style", "loss"}


def test_finetune_set_never_holds_probe_questions(tiny_run):
    _, out = tiny_run
    trained = {r["question"] for r in read_jsonl(out / "finetune_set.jsonl")}
    probed = {r["question"] for r in read_jsonl(out / "predictions.jsonl") if r["set"] != "seen"}
    assert trained and not trained & probed


def test_manifest_is_written_last_and_complete(tiny_lm, tmp_path, monkeypatch):
    import os

    from conftest import MockEncoder

    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    cfg = tiny_config(corpus, tiny_lm, out)
    written, real_replace = [], os.replace

    def replace(src, dst, *args, **kwargs):  # every atomic write and the adapter's rename end in os.replace
        written.append((Path(dst).name, (out / "manifest.json").exists()))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    run_experiment(cfg, encoder=MockEncoder())
    names = [name for name, _ in written]
    assert names[-1] == "manifest.json" and names.count("manifest.json") == 1
    assert {"results.json", "report.html", "predictions.jsonl", "adapter"} <= set(names)
    assert not any(existed for _, existed in written[:-1])  # no manifest while any other file was being written
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == cfg.seed
    assert set(manifest["hashes"]) == {"corpus", "lm", "embedder"} and manifest["packages"]["torch"].startswith("2.13")
    assert {"index", "finetune", "probe", "score", "report"} <= set(manifest["timings"])


def _copy_of(tiny_run, tmp_path):
    """A private copy of the module's run folder: tests that rerun never touch a folder another test reads."""
    import shutil

    cfg, out = tiny_run
    copy = shutil.copytree(out, tmp_path / "run")
    return cfg.model_copy(update={"out": str(copy)}), copy


def test_second_run_reuses_every_stage_and_gives_the_same_figures(tiny_run, tmp_path):
    from conftest import MockEncoder

    cfg, out = _copy_of(tiny_run, tmp_path)
    first = json.loads((out / "results.json").read_text())
    run_experiment(cfg, encoder=MockEncoder())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reused_stages"] == ["index", "finetune", "reader", "probe"] and manifest["reused_arms"] == ARMS
    # a reused stage reports the time it took when it was computed, not the time to load it
    again = json.loads((out / "results.json").read_text())
    assert [again["timings"][s] for s in ("index", "finetune", "probe")] == [first["timings"][s] for s in ("index", "finetune", "probe")]
    assert without_timings(again) == without_timings(first)


NOT_LORA = ["base", "prompt", "fewshot", "rag", "raft"]
NO_RETRIEVAL = ["base", "prompt", "fewshot", "lora"]


@pytest.mark.parametrize("override,stages,arms", [
    ({"probe.bootstrap_resamples": 300}, ["index", "finetune", "reader", "probe"], ARMS),  # a statistic: no answer changes
    ({"name": "renamed"}, ["index", "finetune", "reader", "probe"], ARMS),
    ({"index.k": 1}, ["index", "finetune"], NO_RETRIEVAL),              # k: the arms that retrieve, and the reader's set
    ({"index.chunk_tokens": 20}, ["finetune"], NO_RETRIEVAL),
    ({"index.chunking": "window"}, ["finetune"], NO_RETRIEVAL),
    ({"index.context_units": 2}, ["index", "finetune"], NO_RETRIEVAL),  # what the reader is shown, in training too
    ({"finetune.epochs": 1}, ["index", "reader"], NOT_LORA),            # a new closed-book adapter: only its arms
    ({"finetune.lora_r": 4}, ["index", "reader"], NOT_LORA),
    ({"reader.epochs": 1}, ["index", "finetune"], ARMS[:-1]),          # a new reader: only raft
    ({"reader.abstain_share": 0.5}, ["index", "finetune"], ARMS[:-1]),
    ({"reader.min_steps": 1000}, ["index", "finetune"], ARMS[:-1]),     # more epochs: a new reader
    ({"probe.contrast_plausibility": 0.1}, ["index", "finetune", "reader"],
     [a for a in ARMS if a not in ("rag", "raft")]),                    # the arms that decode context-aware
    ({"probe.fewshot_k": 1}, ["index", "finetune", "reader"], [a for a in ARMS if a != "fewshot"]),
    ({"probe.max_new_tokens": 3}, ["index", "finetune", "reader"], []),
    ({"probe.arms": "[base, rag]"}, ["index", "probe"], ["base", "rag"]),            # no trained arm: no training stage
    ({"probe.sets": "[heldout, unanswerable]"}, ["index", "finetune", "reader"], []),  # other questions
    ({"models.dtype": "bfloat16"}, ["index", "finetune"], []),  # the answerability head reads states in this dtype
    ({"reader.head_questions": 1}, ["index", "finetune"], ARMS[:-1]),  # a new head: only raft
    ({"reader.abstain_by": "reader"}, ["index", "finetune"], ARMS[:-1]),
    ({"reader.head_layers": "[2]"}, ["index", "finetune"], ARMS[:-1]),
])
def test_stage_keys_hold_exactly_what_each_stage_reads(tiny_run, override, stages, arms):
    """The stages' own key functions (run.stage_keys), compared across configs without running anything: the
    stages a rerun would reuse, as the manifest names them, and the arms whose answers it would keep."""
    cfg, _ = tiny_run
    before, after = _keys(cfg), _keys(_changed(cfg, override))
    assert _reused(before, after) == (stages, arms)


def _changed(cfg, override: dict):
    """`cfg` with `override` applied as `--set`s would apply it (so a list is written the way a user writes it)."""
    from ragvsft.config import load_config

    data = cfg.model_dump(mode="json")
    keep = [f"{section}.{k}={json.dumps(v)}" for section in ("models", "index", "finetune", "reader", "probe", "subset")
            for k, v in data[section].items() if f"{section}.{k}" not in override]
    return load_config(None, keep + [f"{k}={v}" for k, v in override.items()] + [f"seed={cfg.seed}"],
                       corpus=cfg.corpus, out=cfg.out)


def _keys(cfg) -> dict:
    from conftest import MockEncoder
    from rich.console import Console
    from ragvsft.run import model_hashes, resolved, stage_keys

    cfg, corpus, _ = resolved(cfg, Console(quiet=True))
    return stage_keys(cfg, corpus, MockEncoder(), model_hashes(cfg, corpus))


def _reused(before: dict, after: dict) -> tuple[list, list]:
    """What a run with keys `after` in a folder made with keys `before` reuses: (stages, arms), as the manifest says."""
    same = lambda name: after.get(name) is not None and after[name] == before.get(name)  # noqa: E731
    arms = [name.split("/", 1)[1] for name in after if name.startswith("probe/") and same(name)]
    stages = [s for s in ("embedder", "index", "finetune", "reader") if same(s)]
    return stages + (["probe"] if len(arms) == sum(n.startswith("probe/") for n in after) else []), arms


def test_a_rerun_uses_the_keys_the_stages_compute(tiny_run, tmp_path):
    """The keys a run records (stages.json) are run.stage_keys', and a changed setting reruns what its keys say."""
    from conftest import MockEncoder

    cfg, out = _copy_of(tiny_run, tmp_path)
    recorded = lambda: {k: v["key"] for k, v in json.loads((out / "stages.json").read_text()).items()}  # noqa: E731
    assert recorded() == {k: v for k, v in _keys(cfg).items() if v is not None}
    changed = _changed(cfg, {"finetune.epochs": 1})
    run_experiment(changed, encoder=MockEncoder())
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["reused_stages"], manifest["reused_arms"]) == (["index", "reader"], NOT_LORA)
    assert recorded() == {k: v for k, v in _keys(changed).items() if v is not None}


def test_a_corrected_alias_rescores_stored_answers_without_generating_them(tiny_run, tmp_path):
    from conftest import FACTS, MockEncoder
    from ragvsft.files import atomic_write_jsonl

    cfg, out = _copy_of(tiny_run, tmp_path)
    rows = read_jsonl(out / "predictions.jsonl")
    stored = next(r for r in rows if r["arm"] == "base" and r["qid"] == "portal/reverse/0")
    stored["answer"] = "It is for reservations."  # stands for an answer the model gave
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    run_experiment(cfg, encoder=MockEncoder())
    assert next(r for r in read_jsonl(out / "predictions.jsonl") if r["qid"] == stored["qid"])["verdict"] == "hallucinated"

    facts = json.loads(json.dumps(FACTS))
    facts[1]["reverse"]["aliases"].append("reservations")  # the corpus author corrects the gold
    corpus = write_corpus(tmp_path / "corpus2", facts=facts)
    run_experiment(cfg.model_copy(update={"corpus": str(corpus)}), encoder=MockEncoder())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reused_stages"] == ["index", "finetune", "reader", "probe"] and manifest["reused_arms"] == ARMS
    after = next(r for r in read_jsonl(out / "predictions.jsonl") if r["arm"] == "base" and r["qid"] == stored["qid"])
    assert after["answer"] == "It is for reservations." and after["verdict"] == "correct"
    assert "reservations" in after["gold"]
    results = json.loads((out / "results.json").read_text())
    assert results["arms"]["base"]["reverse"]["accuracy"] == 0.5  # 1 of the 2 reverse questions


def test_a_stage_that_raises_leaves_no_manifest_and_is_recomputed(tiny_run, tmp_path, monkeypatch):
    from conftest import MockEncoder
    import ragvsft.stages.probe

    cfg, out = _copy_of(tiny_run, tmp_path)
    changed = cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"max_new_tokens": 3})})
    real, calls = ragvsft.stages.probe.run_probe, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed during the third arm")
        return real(*args, **kwargs)

    monkeypatch.setattr(ragvsft.stages.probe, "run_probe", failing)
    with pytest.raises(RuntimeError):
        run_experiment(changed, encoder=MockEncoder())
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(ragvsft.stages.probe, "run_probe", real)
    run_experiment(changed, encoder=MockEncoder())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reused_stages"] == ["index", "finetune", "reader"] and manifest["reused_arms"] == ARMS[:2]
    assert all(r["generated_tokens"] <= 3 for r in read_jsonl(out / "predictions.jsonl"))


def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import os

    from ragvsft import files

    target = tmp_path / "results.json"
    files.atomic_write_json(target, {"old": True})

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        files.atomic_write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_same_config_and_seed_give_the_same_figures_in_fresh_folders(tiny_run, tmp_path):
    from conftest import MockEncoder

    cfg, _ = tiny_run
    results = []
    for name in ("a", "b"):
        run_experiment(cfg.model_copy(update={"out": str(tmp_path / name)}), encoder=MockEncoder())
        results.append(without_timings(json.loads((tmp_path / name / "results.json").read_text())))
    assert results[0] == results[1]


def test_bad_corpus_leaves_no_run_folder(tmp_path, tiny_lm):
    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "facts.jsonl").write_text('{"id": "x"}\n')
    cfg = tiny_config(corpus, tiny_lm, tmp_path / "run")
    with pytest.raises(InputError):
        run_experiment(cfg)
    assert not (tmp_path / "run").exists()


def test_cli_bad_input_exits_2_without_a_run_folder(tmp_path, toy_corpus):
    runner = CliRunner()
    exp = tmp_path / "e.yaml"
    exp.write_text("finetune:\n  epochz: 1\n")
    result = runner.invoke(app, ["run", str(exp), "--corpus", str(toy_corpus), "--out", str(tmp_path / "r1")])
    assert result.exit_code == 2 and f"{exp}:2: unknown key: 'finetune.epochz'" in result.output
    result = runner.invoke(app, ["run", str(exp).replace("e.yaml", "missing.yaml")])
    assert result.exit_code == 2 and "file not found" in result.output
    result = runner.invoke(app, ["run", "experiments/quick.yaml", "--corpus", str(toy_corpus), "--out",
                                 str(tmp_path / "r2"), "--set", f"models.lm={tmp_path / 'no-model'}"])
    assert result.exit_code == 2 and "models.lm" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no such run folder" in result.output
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_written_files_follow_the_umask(tmp_path):
    import os

    from ragvsft import files

    old = os.umask(0o022)
    try:
        files.atomic_write_text(tmp_path / "report.html", "<p>shared</p>")
        assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        files.atomic_write_text(tmp_path / "private.html", "<p>mine</p>")
        assert (tmp_path / "private.html").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_out_never_overwrites_a_strangers_folder_or_file(tmp_path, tiny_lm):
    corpus = write_corpus(tmp_path / "corpus")
    theirs = tmp_path / "theirs"
    (theirs / "adapter").mkdir(parents=True)
    (theirs / "manifest.json").write_text("their manifest")
    (theirs / "adapter" / "weights.bin").write_text("their weights")
    (theirs / "thesis.tex").write_text("their thesis")
    with pytest.raises(InputError, match="holds files ragvsft did not write \\(thesis.tex\\)"):
        run_experiment(tiny_config(corpus, tiny_lm, theirs))
    assert (theirs / "manifest.json").read_text() == "their manifest" and not (theirs / "config.yaml").exists()
    assert (theirs / "adapter" / "weights.bin").read_text() == "their weights"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(InputError, match="names a file, not a folder"):
        run_experiment(tiny_config(corpus, tiny_lm, a_file))
    assert a_file.read_text() == "mine"


def test_commands_refuse_an_unfinished_or_foreign_run_folder(tiny_run, tmp_path):
    runner = CliRunner()
    _, out = _copy_of(tiny_run, tmp_path)
    (out / "manifest.json").unlink()  # what a stopped rerun leaves: files of two runs, no manifest
    for command in (["report", str(out)], ["cost", str(out)], ["ask", str(out), "Who is the head of security?"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "did not finish (no manifest.json)" in result.output, command
    _, out = _copy_of(tiny_run, tmp_path / "second")
    (out / "results.json").write_text("[]")
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2 and 'no "arms" mapping' in result.output
    (out / "results.json").write_text("[" * 100000)
    result = runner.invoke(app, ["cost", str(out)])
    assert result.exit_code == 2 and "not valid JSON" in result.output
    (out / "results.json").write_text('{\n "arms": {\n  "rag": ')  # truncated: the message names the real line
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2 and "results.json:3: not valid JSON" in result.output
    (out / "index" / "faiss.index").unlink()
    result = runner.invoke(app, ["ask", str(out), "Who is the head of security?"])
    assert result.exit_code == 2 and "listed in manifest.json but missing" in result.output


def test_a_run_folder_works_from_any_directory(tiny_run, tmp_path, monkeypatch):
    import yaml

    from ragvsft.live import Session

    _, out = _copy_of(tiny_run, tmp_path)
    assert Path(yaml.safe_load((out / "config.yaml").read_text())["corpus"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    moved = (out.rename(tmp_path / "moved")).resolve()
    from conftest import MockEncoder

    result = Session.open(moved, encoder=MockEncoder()).ask("Who leads the security team?", ["rag", "raft"])
    assert [r["arm"] for r in result["answers"]] == ["rag", "raft"] and result["set"] == "heldout"
    assert 0 <= result["answers"][1]["answerable"] <= 1  # ask declines by the same head as the probe


def test_the_quick_profile_passes_its_checks_on_a_two_layer_model(tmp_path, tiny_lm):
    """The shipped profile's layer settings (null) fit the model: no 'head_layers [15, 30] but ... 0 to 2' refusal."""
    from conftest import REPO
    from ragvsft.config import load_config
    from ragvsft.run import prepare

    corpus = write_corpus(tmp_path / "corpus")
    cfg = load_config(REPO / "experiments" / "quick.yaml", [f"models.lm={tiny_lm}"], corpus=str(corpus),
                      out=str(tmp_path / "run"))
    fitted, _ = prepare(cfg)
    assert (fitted.finetune.first_lora_layer, fitted.reader.first_lora_layer, fitted.reader.head_layers) == (0, 0, [1, 2])


def test_a_model_problem_is_found_before_anything_is_loaded_or_written(tmp_path, tiny_lm):

    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(InputError, match="finetune.target_modules: qkv_proj name no module"):
        run_experiment(tiny_config(corpus, tiny_lm, tmp_path / "r1", **{"finetune.target_modules": "[qkv_proj]"}))
    with pytest.raises(InputError, match="finetune.first_lora_layer: 5, but .* has 2 layers"):
        run_experiment(tiny_config(corpus, tiny_lm, tmp_path / "r1", **{"finetune.first_lora_layer": 5}))
    with pytest.raises(InputError, match="reader.first_lora_layer: 3, but .* has 2 layers"):
        run_experiment(tiny_config(corpus, tiny_lm, tmp_path / "r1", **{"reader.first_lora_layer": 3,
                                                                         "probe.arms": "[rag, raft]"}))
    with pytest.raises(InputError, match=r"reader.head_layers: \[1, 3\], but .*hidden states are 0 \(embeddings\) to 2"):
        run_experiment(tiny_config(corpus, tiny_lm, tmp_path / "r1", **{"reader.head_layers": "[1, 3]",
                                                                         "probe.arms": "[rag, raft]"}))
    assert not (tmp_path / "r1").exists()  # a model without a chat template runs in the plain format (test_chat.py)


def test_ask_checks_the_arms_before_loading_a_model(tiny_run, monkeypatch):
    from ragvsft import live

    monkeypatch.setattr(live, "load_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(InputError, match="--arms: nope not in this run"):
        live.Session.open(tiny_run[1], arms=["rag", "nope"])


def test_results_compare_the_retriever_variants(tiny_run):
    retrieval = json.loads((tiny_run[1] / "results.json").read_text())["retrieval"]
    variants = retrieval["variants"]
    assert set(variants) == {"dense, section chunks", "bm25, section chunks", "hybrid, section chunks",
                             "dense, window chunks"}
    assert [name for name, v in variants.items() if v["used"]] == ["dense, section chunks"]
    assert variants["dense, section chunks"]["recall_at"] == retrieval["recall_at"]
    assert "Retriever variants" in (tiny_run[1] / "report.md").read_text()


def test_damaged_run_records_get_a_message_and_nothing_is_deleted(tiny_run, tmp_path):
    from conftest import MockEncoder

    cfg, out = _copy_of(tiny_run, tmp_path)
    (out / "stages.json").write_text('{\n  "index": {\n    "key": ')  # truncated on line 3
    with pytest.raises(InputError, match="stages.json:3: not valid JSON .*delete the file to recompute"):
        run_experiment(cfg, encoder=MockEncoder())
    (out / "stages.json").write_text('{"index": 1}')
    with pytest.raises(InputError, match="stages.json:1: the stage records of this run folder are damaged"):
        run_experiment(cfg, encoder=MockEncoder())
    assert (out / "manifest.json").is_file()  # refused before anything was deleted
    cfg, out = _copy_of(tiny_run, tmp_path / "second")
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:3] + [lines[3][:20]]) + "\n")  # a truncated line 4
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 2 and "predictions.jsonl:4: damaged" in result.output


def test_an_unknown_key_in_a_run_folders_config_is_a_message(tiny_run, tmp_path):
    _, out = _copy_of(tiny_run, tmp_path)
    with open(out / "config.yaml", "a") as fh:
        fh.write("bogus: 1\n")
    result = CliRunner().invoke(app, ["ask", str(out), "Who leads the security team?"])
    assert result.exit_code == 2 and f"{out / 'config.yaml'}:1: not the config of a ragvsft run" in result.output


def test_the_update_experiment_asks_the_changed_facts_again_and_reuses_what_did_not_change(tiny_lm, tmp_path):
    from conftest import MockEncoder
    from test_corpus import MEAL_UPDATE, write_updates
    from ragvsft.update import update_verdict

    corpus = write_updates(write_corpus(tmp_path / "corpus"), [MEAL_UPDATE])
    cfg = tiny_config(corpus, tiny_lm, tmp_path / "run", **{"update.enabled": "true", "probe.arms": "[rag, lora, raft]"})
    out = run_experiment(cfg, encoder=MockEncoder())
    update = json.loads((out / "results.json").read_text())["update"]
    assert update["facts_changed"] == 1 and update["questions"] == 2 and update["sets"] == ["heldout", "seen"]
    assert set(update["arms"]) == {"rag", "lora", "raft"} and set(update["retrained"]) == {"lora"}
    assert update["arms"]["rag"]["action"] == "re-index" and update["arms"]["rag"]["update_seconds"] == update["seconds"]["reindex"]
    assert update["arms"]["lora"]["action"].startswith("none") and update["retrained"]["lora"]["action"] == "retrain"
    assert update["seconds"]["retrain"] > 0 and (out / "update" / "adapter" / "adapter_model.safetensors").is_file()
    rows = read_jsonl(out / "update" / "predictions.jsonl")
    assert {r["phase"] for r in rows} == {"after", "retrained"} and all(r["fact_id"] == "meal" for r in rows)
    assert all(r["gold"] == ["64 euros", "64", "€64"] for r in rows)  # the new answer is now the gold
    for arm, figures in update["arms"].items():
        verdicts = [update_verdict(r["answer"], r["gold"], ["58 euros", "58", "€58"]) for r in rows
                    if r["arm"] == arm and r["phase"] == "after"]
        assert figures["n"] == 2 and figures["current"] == verdicts.count("current") / 2
    # Unchanged: every stage reused. A different new value: only the update stage runs again.
    run_experiment(cfg, encoder=MockEncoder())
    assert "update" in json.loads((out / "manifest.json").read_text())["reused_stages"]
    write_updates(corpus, [dict(MEAL_UPDATE, answer="66 euros", aliases=["66"], statement="It is 66 euros.",
                                evidence="meal allowance on trips is 66 euros")],
                  {"documents/policies/travel.md": (corpus / "documents/policies/travel.md").read_text().replace("58", "66")})
    run_experiment(cfg, encoder=MockEncoder())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reused_stages"] == ["index", "finetune", "reader", "probe"]
    assert all(r["gold"][0] == "66 euros" for r in read_jsonl(out / "update" / "predictions.jsonl"))


def test_the_update_experiment_needs_an_updates_part(tiny_lm, tmp_path):
    cfg = tiny_config(write_corpus(tmp_path / "corpus"), tiny_lm, tmp_path / "run", **{"update.enabled": "true"})
    with pytest.raises(InputError, match="updates:0: update.enabled needs the corpus's updates/ part"):
        run_experiment(cfg)
    assert not (tmp_path / "run").exists()


def test_the_sample_keeps_every_changed_fact(tmp_path):
    from test_corpus import MEAL_UPDATE, write_updates
    from ragvsft.corpus import load_corpus

    corpus = load_corpus(write_updates(write_corpus(tmp_path / "corpus"), [MEAL_UPDATE]))
    for seed in range(8):
        sample = corpus.subset(2, None, seed, keep=frozenset({"meal"}))
        assert len(sample.facts) == 2 and "meal" in {f.id for f in sample.facts}
    assert corpus.subset(2, None, 3) == corpus.subset(2, None, 3, keep=frozenset())  # unchanged without keep


def test_a_stage_this_run_does_not_run_reports_no_time(tiny_run, tmp_path):
    from conftest import MockEncoder

    cfg, out = _copy_of(tiny_run, tmp_path)
    assert {"finetune", "reader"} <= set(json.loads((out / "manifest.json").read_text())["timings"])
    run_experiment(cfg.model_copy(update={"probe": cfg.probe.model_copy(update={"arms": ["base", "rag"]})}),
                   encoder=MockEncoder())
    timings = json.loads((out / "manifest.json").read_text())["timings"]
    assert "finetune" not in timings and "reader" not in timings  # not the earlier run's training time
    assert set(json.loads((out / "results.json").read_text())["timings"]) == set(timings) - {"report"}


def test_the_index_records_its_encoder_and_ask_embeds_with_that_one(tiny_run, tmp_path, monkeypatch):
    from ragvsft import embedder

    cfg, out = _copy_of(tiny_run, tmp_path)
    assert json.loads((out / "index" / "meta.json").read_text())["encoder"] == "configured"  # tune_embedder false
    (out / "embedder" / "model").mkdir(parents=True)  # a tuned copy an earlier run of the folder left behind
    monkeypatch.setattr(embedder, "load_encoder", lambda spec: ("configured", spec))
    monkeypatch.setattr(embedder, "SentenceEncoder", lambda folder: ("tuned", folder))
    assert embedder.run_encoder(out, "minilm") == ("configured", "minilm")
    (out / "index" / "meta.json").write_text(json.dumps({"encoder": "tuned"}))
    assert embedder.run_encoder(out, "minilm") == ("tuned", out / "embedder" / "model")
    (out / "embedder" / "model").rmdir()
    with pytest.raises(InputError, match="meta.json:1: the index was built by the tuned embedder, but .* is missing"):
        embedder.run_encoder(out, "minilm")


def test_damaged_head_files_get_a_message_naming_the_file(tiny_run, tmp_path):
    cfg, out = _copy_of(tiny_run, tmp_path)
    path = out / "reader" / "fold-0" / "head.json"
    head = json.loads(path.read_text())
    runner = CliRunner()
    damaged = [(dict(head, coef=head["coef"][:-3]), "must be equally long"),
               (dict(head, intercept="NaN"), "'intercept' must be a finite number"),
               (dict(head, coef=[float("nan")] * len(head["coef"])), "'coef' must be a list of finite numbers"),
               (dict(head, layers=[1, 9]), "lie outside this model's hidden states 0 to 2"),
               (dict(head, mean=head["mean"] * 2, scale=head["scale"] * 2, coef=head["coef"] * 2),
                "coefficients, but 2 layer\\(s\\) of this model's width 16 give 32"),
               ({"weights": 1}, "not an answerability head")]
    for data, message in damaged:
        path.write_text(json.dumps(data))  # json writes nan as NaN, which json.loads reads back
        result = runner.invoke(app, ["ask", str(out), "Who leads the security team?", "--arms", "raft"])
        assert result.exit_code == 2 and f"{path}:1: " in result.output, (message, result.output)
        assert " ".join(result.output.split()).find(message.replace("\\", "")) >= 0, (message, result.output)


def test_out_under_a_file_is_a_message(tmp_path, tiny_lm):
    corpus = write_corpus(tmp_path / "corpus")
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(InputError, match="afile:0: is a file, so --out .*afile/run cannot be made under it"):
        run_experiment(tiny_config(corpus, tiny_lm, tmp_path / "afile" / "run"))
    assert (tmp_path / "afile").read_text() == "mine"


def test_report_decides_the_claims_again_and_stores_them(tiny_run, tmp_path):
    _, out = _copy_of(tiny_run, tmp_path)
    results = json.loads((out / "results.json").read_text())
    decided = results["claims"]
    results["claims"] = [{"claim": "stale", "verdict": "supported"}]
    (out / "results.json").write_text(json.dumps(results))
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0
    assert json.loads((out / "results.json").read_text())["claims"] == decided
    assert "stale" not in (out / "report.md").read_text()


def test_stored_curve_answers_and_silent_answers_are_scored_at_results_time(tiny_run):
    _, out = tiny_run
    log = json.loads((out / "adapter" / "training_log.json").read_text())
    assert all("answers" in point and "seen" not in point for point in log["curve"])  # answers, not rates
    reader_log = json.loads((out / "reader" / "fold-0" / "training_log.json").read_text())
    assert "silent_abstained" not in reader_log and all("answer" in s for s in reader_log["silent"])


def test_curve_figures_and_silent_declines_follow_the_current_gold_and_phrases(tiny_run, toy_corpus):
    from ragvsft.corpus import load_corpus
    from ragvsft.stages.finetune import curve_figures, curve_questions
    from ragvsft.stages.reader import silent_abstained

    sample = load_corpus(toy_corpus)
    questions = curve_questions(sample, 2, seed=1)
    seen = [q for q in questions if q.set == "seen"]
    point = {"epoch": 1.0, "loss": 0.5, "answers": [{"qid": q.qid, "answer": "Hi there! It is reservations."}
                                                    for q in questions]}
    before = curve_figures([point], questions, sample)[0]
    assert before["seen"] == 0 and before["epoch"] == 1.0 and before["loss"] == 0.5
    corrected = [q.__class__(q.set, q.qid, q.question, q.fact_id, (*q.gold, "reservations")) if q.gold else q
                 for q in questions]
    assert len(seen) == 2 and curve_figures([point], corrected, sample)[0]["seen"] == 1.0
    logs = [{"silent": [{"answer": "Sorry, no clue.", "answerable": None}, {"answer": "It is 3.", "answerable": 0.2}]}]
    assert silent_abstained(logs, ["i can't find"]) == 0.5
    assert silent_abstained(logs, ["i can't find", "no clue"]) == 1.0


def test_the_learning_curve_draws_its_facts_across_the_sample(tmp_path):
    from conftest import FACTS
    from ragvsft.corpus import load_corpus
    from ragvsft.stages.finetune import curve_questions

    facts = [dict(FACTS[i % 4], id=f"{FACTS[i % 4]['id']}-{i}",
                  train_questions=[f"{q} ({chr(97 + i)})" for q in FACTS[i % 4]["train_questions"]],
                  probe_questions=[f"{q} ({chr(97 + i)})" for q in FACTS[i % 4]["probe_questions"]]) for i in range(24)]
    facts = sorted(facts, key=lambda f: f["document"])  # file order: documents one after the other
    sample = load_corpus(write_corpus(tmp_path / "c", facts=facts))
    picked = lambda seed: [q.fact_id for q in curve_questions(sample, 6, seed) if q.set == "seen"]  # noqa: E731
    assert picked(1) == picked(1) and picked(1) != picked(2)  # reproducible, and drawn by the seed
    documents = {f.document for f in sample.facts if f.id in picked(1)}
    assert len(documents) > 1 and picked(1) != [f.id for f in sample.facts[:6]]


def test_the_compute_floor_counts_the_tokens_the_run_saw(tiny_run):
    cfg, out = tiny_run
    results = json.loads((out / "results.json").read_text())
    perf = results["performance"]
    rows = read_jsonl(out / "predictions.jsonl") + (read_jsonl(out / "development.jsonl")
                                                    if (out / "development.jsonl").exists() else [])
    probe = perf["stages"]["probe"]
    reused = sum(r["reused_tokens"] for r in rows)
    assert 0 < reused < sum(r["prompt_tokens"] for r in rows)  # the arms' shared system prompt, computed once each
    contrasts = sum(r.get("contrast_tokens", 0) for r in rows)  # the context-free prompts, decoded beside
    contrasted = {arm for arm in cfg.probe.arms if contrast_weight(arm, cfg.probe) > 0}
    assert contrasts > 0 and "rag" in contrasted and "lora" not in contrasted
    assert all(("contrast_tokens" in r) == (r["arm"] in contrasted) for r in rows)
    assert probe["forward_tokens"] == sum(r["prompt_tokens"] + r["generated_tokens"] for r in rows) - reused + contrasts
    assert probe["gflop"] == round(2 * perf["parameters"] * probe["forward_tokens"] / 1e9, 1)
    trained = perf["stages"]["finetune (training)"]
    assert trained["trained_tokens"] == results["training"]["tokens"] > 0
    assert perf["precision"] == results["config"]["models"]["dtype"] == results["precision"]["chosen"]["models.dtype"]
    if perf["peak_gflops"]:  # measured where the precision was chosen by `auto`
        assert 0 < probe["share_of_peak"] and probe["floor_seconds"] <= probe["seconds"] / probe["share_of_peak"] + 1


def test_named_adapters_give_the_answers_of_merged_ones_in_every_stage(tiny_lm, tmp_path):
    """models.adapters=named (one shared base with the adapters loaded by name, what `auto` takes on a GPU) against
    merged (a copy per adapter, the CPU's): the same answers from the reader's silent check, every probe arm, the
    update stage (before and after retraining) and `ask`."""
    from conftest import MockEncoder
    from test_corpus import MEAL_UPDATE, write_updates
    from ragvsft.live import Session

    corpus = write_updates(write_corpus(tmp_path / "corpus"), [MEAL_UPDATE])
    answers, chances = {}, {}
    for how in ("merged", "named"):
        # learning rates high enough that every adapter changes the tiny model's answers
        cfg = tiny_config(corpus, tiny_lm, tmp_path / how, **{"update.enabled": "true", "models.adapters": how,
                                                               "finetune.learning_rate": 0.05,
                                                               "reader.learning_rate": 0.05})
        out = run_experiment(cfg, encoder=MockEncoder())
        rows = read_jsonl(out / "predictions.jsonl") + read_jsonl(out / "update" / "predictions.jsonl")
        silent = [s for p in sorted(out.glob("reader/fold-*/training_log.json")) for s in json.loads(p.read_text())["silent"]]
        asked = Session.open(out, encoder=MockEncoder()).ask(rows[0]["question"])["answers"]
        answers[how] = ({(r["arm"], r["qid"], r.get("phase")): r["answer"] for r in rows}, [s["answer"] for s in silent],
                        {r["arm"]: r["answer"] for r in asked})
        chances[how] = [s["answerable"] for s in silent]  # the head's, on hidden states: equal up to rounding
    assert {r.get("phase") for r in read_jsonl(tmp_path / "named" / "update" / "predictions.jsonl")} == {"after", "retrained"}
    assert answers["named"][1] and answers["named"][2].keys() == set(ARMS)
    probed = answers["merged"][0]
    for arm in ("lora", "raft"):  # the adapters change answers, so an adapter left out would show
        assert any(probed[(arm, qid, phase)] != probed[("base", qid, phase)]
                   for a, qid, phase in probed if a == arm and ("base", qid, phase) in probed)
    assert answers["named"] == answers["merged"]
    assert chances["named"] == pytest.approx(chances["merged"], abs=1e-3)
