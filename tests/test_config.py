"""Config: every experiment file loads; overrides merge; unknown keys and bad values name the file, line and key."""

from pathlib import Path

import pytest

from conftest import REPO
from ragvsft.config import load_config, parse_overrides
from ragvsft.files import InputError

EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_loads_and_names_its_command(path):
    from ragvsft.sweep import load_sweep

    command = "sweep" if "\nsweep:" in path.read_text() else "run"
    cfg = load_config(path, allow_sweep=True) if command == "sweep" else load_config(path)
    assert cfg.name == path.stem and cfg.run_dir == Path("runs") / path.stem
    assert path.read_text().splitlines()[0] == f"# ragvsft {command} experiments/{path.name}"
    if command == "sweep":
        assert len(load_sweep(path)[1]) >= 2  # every combination checked


def test_quick_profile_is_a_subset_of_at_least_40_facts():
    cfg = load_config(REPO / "experiments" / "quick.yaml")
    assert cfg.subset.facts >= 40 and cfg.subset.unanswerable >= 10
    assert set(cfg.probe.arms) == {"base", "prompt", "fewshot", "rag", "lora", "lora_rag", "raft"}  # all seven


def test_overrides_take_precedence_in_order(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text("finetune:\n  epochs: 5\n")
    cfg = load_config(exp, ["finetune.epochs=7", "probe.arms=[base, rag]"], out="elsewhere")
    assert cfg.finetune.epochs == 7 and cfg.probe.arms == ["base", "rag"] and cfg.run_dir == Path("elsewhere")
    assert cfg.finetune.lora_r == load_config(None).finetune.lora_r  # untouched keys keep their defaults


def test_unknown_key_names_file_line_and_key(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text("# comment\nsubset:\n  facts: 10\n  factz: 3\n")
    with pytest.raises(InputError) as exc:
        load_config(exp)
    assert exc.value.problems == [f"{exp}:4: unknown key: 'subset.factz'"]


def test_bad_values_are_all_reported(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text("finetune:\n  epochs: -1\nindex:\n  k: 0\n")
    with pytest.raises(InputError) as exc:
        load_config(exp)
    problems = sorted(exc.value.problems)
    assert len(problems) == 2
    assert problems[0].startswith(f"{exp}:2:") and problems[0].endswith("'finetune.epochs'")
    assert problems[1].startswith(f"{exp}:4:") and problems[1].endswith("'index.k'")


def test_bad_cli_override():
    with pytest.raises(InputError) as exc:
        load_config(None, ["probe.arms=[base, oracle]"])
    assert exc.value.problems[0].startswith("--set:") and "probe.arms" in exc.value.problems[0]
    with pytest.raises(InputError):
        parse_overrides(["no-equals-sign"])


def test_a_bad_value_of_a_key_with_several_types_is_one_problem_at_its_own_line(tmp_path):
    """index.tune_development takes a boolean or "train": pydantic reports each branch with a tag after the key
    ("...bool", "...literal['train']"), which once sent the message to defaults.yaml's line, twice."""
    exp = tmp_path / "e.yaml"
    exp.write_text("index:\n  k: 3\n  tune_development: sometimes\n")
    with pytest.raises(InputError) as exc:
        load_config(exp)
    assert exc.value.problems == [f"{exp}:3: Input should be a valid boolean, unable to interpret input or input "
                                  "should be 'train': 'index.tune_development'"]
    with pytest.raises(InputError) as exc:
        load_config(None, ["index.tune_development=sometimes"])
    assert len(exc.value.problems) == 1 and exc.value.problems[0].startswith("--set: ")
    assert exc.value.problems[0].endswith(": 'index.tune_development'")


def test_invalid_yaml_names_line(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text("subset:\n  facts: [1, 2\n")
    with pytest.raises(InputError) as exc:
        load_config(exp)
    assert exc.value.problems[0].startswith(f"{exp}:") and "invalid YAML" in exc.value.problems[0]


def test_an_empty_list_of_arms_or_sets_is_refused():
    with pytest.raises(InputError) as exc:
        load_config(None, ["probe.arms=[]", "probe.sets=[]"])
    assert any("'probe.arms'" in p for p in exc.value.problems) and any("'probe.sets'" in p for p in exc.value.problems)


def test_yaml_bombs_and_deep_nesting_get_a_line_not_a_hang(tmp_path):
    import time

    from ragvsft.files import InputError, load_yaml_with_lines

    bomb = tmp_path / "bomb.yaml"
    rows = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    rows += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    bomb.write_text("\n".join(rows) + "\n")
    began = time.perf_counter()
    with pytest.raises(InputError, match=r"bomb.yaml:2: YAML aliases \(\*a\) are not allowed"):
        load_yaml_with_lines(bomb)
    assert time.perf_counter() - began < 2
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 50000 + "]" * 50000 + "\n")
    began = time.perf_counter()
    with pytest.raises(InputError, match="deep.yaml:1: nested more than 64 levels"):
        load_yaml_with_lines(deep)
    assert time.perf_counter() - began < 10  # composing it whole took minutes
    nested = tmp_path / "nested.yaml"
    nested.write_text("a:\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(1, 70)) + "  " * 70 + "v: 1\n")
    with pytest.raises(InputError, match="nested.yaml:65: nested more than 64"):
        load_yaml_with_lines(nested)
    with pytest.raises(InputError, match="is a folder"):
        load_yaml_with_lines(tmp_path)


def test_null_layer_settings_fit_the_model_depth():
    from ragvsft.config import resolve_layers

    assert load_config(REPO / "experiments" / "quick.yaml").finetune.first_lora_layer == 0  # every layer (README)
    quick = load_config(REPO / "experiments" / "quick.yaml", ["finetune.first_lora_layer=null"])
    assert quick.finetune.first_lora_layer is None and quick.reader.head_layers is None
    layers = lambda cfg: (cfg.finetune.first_lora_layer, cfg.reader.first_lora_layer, cfg.reader.head_layers)  # noqa: E731
    assert layers(resolve_layers(quick, 30)) == (10, 10, [15, 30])  # SmolLM2: the settings measured in "Measured"
    assert layers(resolve_layers(quick, 2)) == (0, 0, [1, 2])
    assert layers(resolve_layers(quick, 1)) == (0, 0, [1])
    explicit = load_config(None, ["reader.head_layers=[3]", "finetune.first_lora_layer=5", "reader.first_lora_layer=4"])
    assert layers(resolve_layers(explicit, 30)) == (5, 4, [3])
    assert layers(resolve_layers(load_config(None), 30))[0] == 0  # the defaults adapt every layer


def test_an_experiment_file_builds_on_another_with_extends(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nfinetune:\n  epochs: 3\n  lora_r: 4\nprobe:\n  heldout_per_fact: 1\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nfinetune:\n  epochs: 5\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.finetune.epochs, cfg.finetune.lora_r, cfg.probe.heldout_per_fact) == (5, 4, 1)
    assert cfg.name == "child"  # a run is named after its own file, never its base
    # The shipped files that extend the quick profile hold exactly its settings plus their own.
    quick, update = (load_config(REPO / "experiments" / f"{n}.yaml") for n in ("quick", "update"))
    assert update.update.enabled and update.finetune == quick.finetune and update.subset == quick.subset


def test_extends_problems_name_the_file_and_line(tmp_path):
    (tmp_path / "loop-a.yaml").write_text("extends: loop-b.yaml\n")
    (tmp_path / "loop-b.yaml").write_text("finetune:\n  epochs: 2\nextends: loop-a.yaml\n")
    with pytest.raises(InputError, match=r"loop-b.yaml:3: 'extends: loop-a.yaml' goes round in a circle"):
        load_config(tmp_path / "loop-a.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(InputError, match=r"orphan.yaml:1: 'extends' must name an experiment file"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "swept.yaml").write_text("sweep:\n  seeds: [1, 2]\n")
    (tmp_path / "on-sweep.yaml").write_text("extends: swept.yaml\n")
    with pytest.raises(InputError, match=r"swept.yaml:1: a file that others extend cannot hold a sweep section"):
        load_config(tmp_path / "on-sweep.yaml")
    (tmp_path / "typo.yaml").write_text("finetune:\n  epochz: 2\n")
    (tmp_path / "on-typo.yaml").write_text("extends: typo.yaml\n")
    with pytest.raises(InputError, match=r"typo.yaml:2: unknown key: 'finetune.epochz'"):
        load_config(tmp_path / "on-typo.yaml")


def test_defaults_yaml_is_the_one_place_a_default_is_written():
    """Every config field is required (no default beside defaults.yaml), and defaults.yaml sets every one of them."""
    import yaml
    from pydantic import BaseModel

    from ragvsft.config import DEFAULTS_PATH, Config, config_dict, flatten

    def defaults_in(model: type[BaseModel], prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():
            if not field.is_required():
                found.append(prefix + name)
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found += defaults_in(kind, f"{prefix}{name}.")
        return found

    assert defaults_in(Config) == []
    written = yaml.safe_load(DEFAULTS_PATH.read_text())
    assert set(flatten(written)) == set(flatten(config_dict(load_config(None))))
    # a key removed from the defaults is refused by name, not filled in silently
    without = {k: v for k, v in written.items() if k != "update"}
    with pytest.raises(Exception, match="update"):
        Config.model_validate(without)


def test_ask_refuses_a_run_config_that_lacks_a_key_instead_of_filling_it(tiny_run, copy_tree, tmp_path):
    import yaml

    from ragvsft import live

    run = copy_tree(tiny_run[1], tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["index"]["context_units"]  # an older run: the key did not exist when it was made
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(InputError, match=r"config.yaml:1: .*it lacks index.context_units: made by an older ragvsft"):
        live.Session.open(run)
