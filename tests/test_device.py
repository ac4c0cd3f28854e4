"""models.device: auto takes cuda, then mps, then cpu; every model copy and every batch of inputs goes there; on a
machine without an accelerator `auto` and `cpu` are the same run (the same stage keys, so the same answers)."""

from __future__ import annotations

import pytest
import torch

from ragvsft import models, precision
from ragvsft.files import InputError


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert models.resolve_device("auto") == expected
    assert models.resolve_device("cpu") == "cpu"
    if not cuda:
        with pytest.raises(InputError, match="models.device: cuda, but torch sees no cuda device"):
            models.resolve_device("cuda")


def test_an_accelerator_picks_its_precision_without_measuring_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    never = lambda p: pytest.fail("the CPU was measured")  # noqa: E731
    chosen, record = precision.resolve({"models.dtype": "auto"}, tmp_path / "p.json", never, device="cuda")
    assert chosen == {"models.dtype": "bfloat16"} and record["device"] == "cuda" and record["gflops"] is None
    assert precision.resolve({"models.dtype": "auto"}, tmp_path / "p.json", never, device="mps")[0] == {
        "models.dtype": "float32"}


def test_copies_and_inputs_follow_the_device(tiny_lm, monkeypatch):
    """Every generation copy is placed on the asked device, and generate/prompt_states move their batches to
    model.device (here the CPU; a GPU machine runs the same code with cuda)."""
    from conftest import FACTS
    from ragvsft.arms import generate, prompt_states

    model, tokenizer = models.load_lm(str(tiny_lm))
    copy = models.fresh_copy(model, torch.float32, device="cpu")
    assert copy.device.type == "cpu" and next(copy.parameters()).dtype == torch.float32
    moved = []
    real_to = type(tokenizer.pad({"input_ids": [[1, 2]]}, return_tensors="pt")).to

    def to(batch, device, *args, **kwargs):
        moved.append(str(device))
        return real_to(batch, device, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer.pad({"input_ids": [[1, 2]]}, return_tensors="pt")), "to", to)
    conversations = [[{"role": "user", "content": FACTS[0]["train_questions"][0]}]]
    generate(copy, tokenizer, conversations, 3, 4)
    prompt_states(copy, tokenizer, conversations, [1], 4)
    assert moved == ["cpu", "cpu"]


def test_auto_and_cpu_are_the_same_run_without_an_accelerator(tiny_run, monkeypatch):
    from conftest import MockEncoder
    from rich.console import Console
    from ragvsft.run import model_hashes, resolved, stage_keys

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    cfg, _ = tiny_run
    keys = []
    for device in ("auto", "cpu"):
        asked = cfg.model_copy(update={"models": cfg.models.model_copy(update={"device": device})})
        resolved_cfg, corpus, _ = resolved(asked, Console(quiet=True))
        assert resolved_cfg.models.device == "cpu"
        keys.append(stage_keys(resolved_cfg, corpus, MockEncoder(), model_hashes(resolved_cfg, corpus)))
    assert keys[0] == keys[1]
