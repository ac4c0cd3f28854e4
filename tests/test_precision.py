"""Precision by measurement: `auto` becomes the precision that multiplies faster here, measured once per machine."""

import json

from ragvsft import precision


def test_auto_picks_bfloat16_only_where_it_is_clearly_faster():
    assert precision.choose({"float32": 217.0, "bfloat16": 122.0}) == "float32"  # AVX512-BF16 without AMX
    assert precision.choose({"float32": 270.0, "bfloat16": 2574.0}) == "bfloat16"  # AMX
    assert precision.choose({"float32": 100.0, "bfloat16": 110.0}) == "float32"  # within the margin: not worth it


def test_resolve_measures_once_per_machine_and_keeps_explicit_choices(tmp_path, monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    calls = []
    stub = lambda p: calls.append(p) or {"float32": 200.0, "bfloat16": 2000.0}[p]  # noqa: E731
    cache = tmp_path / "precision.json"
    chosen, record = precision.resolve({"models.dtype": "auto", "finetune.precision": "float32"}, cache, stub)
    assert chosen == {"models.dtype": "bfloat16", "finetune.precision": "float32"}
    assert record["gflops"] == {"float32": 200.0, "bfloat16": 2000.0} and record["cached"] is False
    assert record["asked"]["models.dtype"] == "auto" and record["cpu"] and isinstance(record["flags"], list)
    again, record = precision.resolve({"models.dtype": "auto", "finetune.precision": "auto"}, cache, stub)
    assert again == {"models.dtype": "bfloat16", "finetune.precision": "bfloat16"} and record["cached"] is True
    assert calls == ["float32", "bfloat16"]  # measured once, then read from the cache
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # the same CPU told to behave as one without AMX
    slow = lambda p: {"float32": 200.0, "bfloat16": 100.0}[p]  # noqa: E731
    assert precision.resolve({"models.dtype": "auto"}, cache, slow)[0] == {"models.dtype": "float32"}
    assert len(json.loads(cache.read_text())) == 2
    explicit, record = precision.resolve({"models.dtype": "float32"}, tmp_path / "unused.json", stub)
    assert explicit == {"models.dtype": "float32"} and record["gflops"] is None and not (tmp_path / "unused.json").exists()


def test_a_damaged_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    cache = tmp_path / "precision.json"
    cache.write_text("{not json")
    chosen, record = precision.resolve({"models.dtype": "auto"}, cache, lambda p: 50.0)
    assert chosen == {"models.dtype": "float32"} and record["cached"] is False
    assert json.loads(cache.read_text())[precision.machine_key()] == {"float32": 50.0, "bfloat16": 50.0}


def test_the_probe_measures_a_real_rate():
    assert precision.matmul_rate("float32", (64, 64, 64), seconds=0.01) > 0
