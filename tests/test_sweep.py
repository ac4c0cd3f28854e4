"""Sweeps and cross-run comparisons: expansion into run folders, mean ± sd, valid LaTeX, and bad sweep sections."""

import json
from pathlib import Path
import re

import pytest
import yaml
from typer.testing import CliRunner

from conftest import MockEncoder, write_corpus
from ragvsft.cli import app
from ragvsft.presentation.compare import comparison, comparison_latex, latex_escape, write_comparison
from ragvsft.config import load_config
from ragvsft.files import InputError
from ragvsft.sweep import load_sweep, run_sweep

TINY = {"finetune": {"epochs": 1, "batch_size": 2, "curve_points": 0}, "index": {"chunk_tokens": 16, "chunk_overlap": 4, "k": 2, "tune_embedder": False},
        "probe": {"arms": ["rag", "lora"], "sets": ["heldout", "seen", "unanswerable"], "max_new_tokens": 4,
                  "batch_size": 4, "bootstrap_resamples": 100}}


def experiment(tmp_path, sweep, tiny_lm=None, **extra) -> "Path":
    corpus = write_corpus(tmp_path / "corpus")
    data = {**TINY, "corpus": str(corpus), "out": str(tmp_path / "sweep"), **extra, "sweep": sweep}
    if tiny_lm:
        data["models"] = {"lm": str(tiny_lm)}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_values_times_seeds_expand_to_one_folder_each(tmp_path):
    path = experiment(tmp_path, {"finetune.questions_per_fact": [1, 2], "finetune.lora_r": [4, 8], "seeds": [1, 2, 3]})
    base, combos = load_sweep(path)
    assert len(combos) == 2 * 2 * 3 and len({c.folder for c in combos}) == 12
    assert combos[0].settings == {"finetune.questions_per_fact": 1, "finetune.lora_r": 4} and combos[0].seed == 1
    assert combos[0].folder == "finetune.questions_per_fact=1,finetune.lora_r=4,seed=1"
    assert base.run_dir == tmp_path / "sweep"


@pytest.mark.parametrize("sweep, expected", [
    ({"finetune.bogus": [1]}, "sweep.finetune.bogus: unknown key"),
    ({"finetune.epochs": ["many"]}, "sweep.finetune.epochs = 'many': Input should be a valid number"),
    ({"finetune.epochs": []}, "sweep.finetune.epochs must be a non-empty list"),
    ({"finetune.epochs": 3}, "sweep.finetune.epochs must be a non-empty list"),
    ({"seeds": ["a"]}, "sweep.seeds must be a list of integers"),
    ({"seed": [1, 2]}, "sweep.seed: unknown key"),
    ({"finetune.questions_per_fact": [0]}, "greater than or equal to 1"),
    ({}, "a sweep needs a 'sweep:' section"),
])
def test_a_bad_sweep_section_names_file_and_line_before_any_run(tmp_path, sweep, expected):
    path = experiment(tmp_path, sweep)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), start=1) if text.startswith("sweep:"))
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert re.search(rf"exp\.yaml:{line}|exp\.yaml:{line + 1}", result.output), result.output
    assert not (tmp_path / "sweep").exists()


def test_run_refuses_a_file_with_a_sweep_section(tmp_path):
    path = experiment(tmp_path, {"finetune.epochs": [1, 2]})
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "run it with `ragvsft sweep" in result.output


def fake_run(folder, seed, questions_per_fact, rag, lora):
    """A complete run folder holding only what compare reads."""
    folder.mkdir(parents=True)
    sets = lambda acc: {s: {"n": 10, "accuracy": acc} for s in ("heldout", "seen")}  # noqa: E731
    results = {"config": {"name": "x", "seed": seed, "out": str(folder), "finetune": {"questions_per_fact": questions_per_fact}},
               "arms": {"rag": sets(rag), "lora": sets(lora)}}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "manifest.json").write_text(json.dumps({"status": "complete", "files": ["results.json"]}))
    return folder


def test_mean_and_sd_over_seeds_per_setting(tmp_path):
    folders = [fake_run(tmp_path / f"q{q}-s{s}", s, q, 0.2, acc)
               for q, accs in ((1, (0.1, 0.3)), (4, (0.5, 0.5))) for s, acc in zip((1, 2), accs)]
    table = write_comparison(tmp_path / "out", folders)
    assert table["settings"] == ["finetune.questions_per_fact"]
    one, four = table["rows"]
    assert one["setting"] == {"finetune.questions_per_fact": 1} and one["seeds"] == [1, 2]
    assert one["figures"]["lora"]["heldout"]["mean"] == pytest.approx(0.2)
    assert one["figures"]["lora"]["heldout"]["sd"] == pytest.approx(0.1414, abs=1e-4)  # sample sd of 0.1 and 0.3
    assert four["figures"]["lora"]["heldout"]["sd"] == 0.0
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "| finetune.questions_per_fact=1 | 2 | 20.0 ± 0.0 | 20.0 ± 0.0 | 20.0 ± 14.1 |" in md
    rows = list(csv_rows(tmp_path / "out" / "comparison.csv"))
    assert rows[0][:3] == ["finetune.questions_per_fact", "seeds", "arm"] and len(rows) == 1 + 2 * 4
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 1000
    assert "q1-s1/report.html" in (tmp_path / "out" / "report.html").read_text()


def csv_rows(path):
    import csv

    with open(path, newline="") as fh:
        yield from csv.reader(fh)


def test_the_latex_table_is_valid_booktabs(tmp_path):
    folders = [fake_run(tmp_path / f"r{q}", 1, q, 0.25, 0.5) for q in (1, 2)]
    tex = comparison_latex(comparison(__import__("ragvsft.presentation.compare", fromlist=["load_runs"]).load_runs(folders)))
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    columns = len(re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1))
    body = tex.split(r"\toprule", 1)[1].split(r"\bottomrule", 1)[0].replace(r"\midrule", "")
    rows = [r for r in body.split(r"\\") if r.strip()]
    assert len(rows) == 3 and all(len(re.split(r"(?<!\\)&", r)) == columns for r in rows)
    depth = 0
    for char in re.sub(r"\\[{}]", "", tex):  # braces balance once escaped ones are removed
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0 and r"finetune.questions\_per\_fact=1" in tex and "$\\pm$" not in tex.split(r"\midrule")[0]
    assert latex_escape("50% & a_b #1 {x}") == r"50\% \& a\_b \#1 \{x\}"


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "stranger").mkdir()
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "stranger")])
    assert result.exit_code == 2 and "neither a run folder" in result.output


def test_a_sweep_runs_every_combination_and_compares_them(tmp_path, tiny_lm):
    path = experiment(tmp_path, {"finetune.questions_per_fact": [1, 2], "seeds": [1, 2]}, tiny_lm)
    folder = run_sweep(path, encoder=MockEncoder())
    record = json.loads((folder / "sweep.json").read_text())
    assert record["status"] == "complete" and len(record["runs"]) == 4
    for run in record["runs"]:
        assert json.loads((folder / run["folder"] / "manifest.json").read_text())["status"] == "complete"
        examples = (folder / run["folder"] / "finetune_set.jsonl").read_text().count("\n")
        assert examples == {1: 4, 2: 5}[run["settings"]["finetune.questions_per_fact"]]  # the toy facts' paraphrases
    table = json.loads((folder / "comparison.json").read_text())
    assert [row["seeds"] for row in table["rows"]] == [[1, 2], [1, 2]]
    assert all(row["figures"]["lora"]["heldout"]["sd"] is not None for row in table["rows"])
    for name in ("comparison.md", "comparison.csv", "comparison.tex", "comparison.png", "report.html"):
        assert (folder / name).is_file()
    again = run_sweep(path, encoder=MockEncoder())  # a rerun reuses every stage of every run
    manifest = json.loads((again / record["runs"][0]["folder"] / "manifest.json").read_text())
    assert manifest["reused_stages"] == ["index", "finetune", "probe"]
    result = CliRunner().invoke(app, ["compare", str(folder), str(folder / record["runs"][0]["folder"]),
                                      "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0 and (tmp_path / "cmp" / "comparison.tex").is_file()


def test_a_sweep_folder_that_holds_strangers_is_refused(tmp_path):
    path = experiment(tmp_path, {"finetune.epochs": [1]})
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a ragvsft sweep"):
        run_sweep(path)
    assert (tmp_path / "sweep" / "notes.txt").read_text() == "mine"


def test_compare_never_writes_over_a_run_folder_and_refuses_a_damaged_sweep_record(tmp_path):
    run = fake_run(tmp_path / "run", 1, 1, 0.2, 0.3)
    (run / "report.html").write_text("the run's own report")
    result = CliRunner().invoke(app, ["compare", str(run), "--out", str(run)])
    assert result.exit_code == 2 and "holds other files" in result.output
    assert (run / "report.html").read_text() == "the run's own report"
    (tmp_path / "sweep").mkdir()
    for record, expected in (('{"runs": "abc"}', "not the record of a ragvsft sweep"),
                             ('{"status": "running", "runs": []}', "the sweep did not finish"),
                             ('{"runs": [', "sweep.json:1: not valid JSON")):
        (tmp_path / "sweep" / "sweep.json").write_text(record)
        result = CliRunner().invoke(app, ["compare", str(tmp_path / "sweep")])
        assert result.exit_code == 2 and expected in result.output, result.output


def test_a_key_an_older_run_did_not_record_is_shown_as_such_not_as_todays_default(tmp_path):
    new = fake_run(tmp_path / "new", 1, 2, 0.4, 0.2)
    results = json.loads((new / "results.json").read_text())
    results["config"]["index"] = {"context_units": 1}
    (new / "results.json").write_text(json.dumps(results))
    old = fake_run(tmp_path / "old", 1, 2, 0.3, 0.2)  # made before index.context_units existed
    table = write_comparison(tmp_path / "out", [old, new])
    assert table["settings"] == ["index.context_units"]
    assert [row["setting"]["index.context_units"] for row in table["rows"]] == ["not recorded", 1]


def test_devices_place_each_run_in_its_own_process_and_a_multi_rank_launch_is_refused(tmp_path, tiny_lm, monkeypatch):
    from ragvsft.run import run_experiment
    from ragvsft.sweep import parse_devices

    assert parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"] and parse_devices(None) == []
    with pytest.raises(InputError, match="--devices: gpu0: name devices as cuda:0"):
        parse_devices("gpu0")
    path = experiment(tmp_path, {"finetune.questions_per_fact": [1, 2]}, tiny_lm)
    folder = run_sweep(path, devices=["cpu", "cpu"])  # two runs at once, each a `ragvsft run` process
    record = json.loads((folder / "sweep.json").read_text())
    assert record["status"] == "complete"
    for run in record["runs"]:
        manifest = json.loads((folder / run["folder"] / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["config"]["models"]["device"] == "cpu"
        assert (folder / "logs" / f"{run['folder']}.log").is_file()
    assert len(json.loads((folder / "comparison.json").read_text())["rows"]) == 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    cfg = load_config(path, allow_sweep=True, out=str(tmp_path / "ranked"))
    with pytest.raises(InputError, match="WORLD_SIZE=2: a ragvsft run is one process"):
        run_experiment(cfg)
    assert not (tmp_path / "ranked").exists()
