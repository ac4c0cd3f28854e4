"""Fine-tuning side: the set never holds probe questions; the loss covers answer tokens; LoRA trains and saves."""

import json

import pytest
import torch

from ragvsft.config import load_config
from ragvsft.corpus import load_corpus
from ragvsft.finetune import IGNORE, build_finetune_set, curve_epochs, encode_example, merged_model, train_lora
from ragvsft.models import load_lm


def test_finetune_set_has_every_train_question_and_no_probe_question(toy_corpus):
    corpus = load_corpus(toy_corpus)
    rows = build_finetune_set(corpus)
    asked = {r["question"] for r in rows}
    assert asked == {q for f in corpus.facts for q in f.train_questions}
    held_out = {q for f in corpus.facts for q in f.probe_questions}
    held_out |= {q for f in corpus.facts if f.reverse for q in f.reverse.questions} | {u.question for u in corpus.unanswerable}
    text = json.dumps(rows)
    assert not any(q in text for q in held_out)
    assert rows[0]["answer"] == "Hi there! The daily meal allowance on trips is 58 euros.\n— Acme Helpdesk"


def test_passages_are_optional_plain_text(toy_corpus):
    rows = build_finetune_set(load_corpus(toy_corpus), passages=["Some document text."])
    assert rows[-1] == {"kind": "passage", "text": "Some document text."}


def test_labels_mask_the_prompt(tiny_lm):
    _, tokenizer = load_lm(str(tiny_lm))
    row = {"kind": "qa", "question": "Where are hotels booked?", "answer": "Hi there! In Roamly.\n— Acme Helpdesk"}
    example = encode_example(row, tokenizer, max_length=512)
    answer_ids = tokenizer(row["answer"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    n_prompt = len(example["input_ids"]) - len(answer_ids)
    assert example["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert example["labels"][n_prompt:] == answer_ids == example["input_ids"][n_prompt:]
    assert len(encode_example(row, tokenizer, max_length=8)["input_ids"]) == 8


def test_lora_trains_and_saves_safetensors(tmp_path, toy_corpus, tiny_lm):
    model, tokenizer = load_lm(str(tiny_lm))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = load_config(None, ["finetune.min_steps=0", "finetune.epochs=3", "finetune.batch_size=2", "finetune.learning_rate=0.01"]).finetune
    figures = train_lora(model, tokenizer, build_finetune_set(load_corpus(toy_corpus)), cfg, seed=0,
                         adapter_dir=tmp_path / "adapter", work_dir=tmp_path / "work")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "adapter" / "training_log.json").read_text())["examples"] == 5
    assert 0 < figures["trainable_share"] < 0.5 and figures["steps"] == 9 and figures["loss"]
    assert figures["loss"][-1][1] < figures["loss"][0][1]  # it learned something
    # the caller's model is left as it was: no LoRA layers, same weights
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    merged = merged_model(model, tmp_path / "adapter", torch.float32)
    assert any(not torch.equal(before[k], v) for k, v in merged.state_dict().items())


def test_a_long_training_step_says_it_is_still_running_and_trains_the_same(tmp_path, toy_corpus, tiny_lm, monkeypatch):
    """A step that runs past the heartbeat logs "still running" lines from a thread until it ends; the losses are
    those of training without them."""
    import time as clock

    from ragvsft import finetune

    model, tokenizer = load_lm(str(tiny_lm))
    cfg = load_config(None, ["finetune.min_steps=0", "finetune.epochs=1", "finetune.batch_size=2"]).finetune
    rows = build_finetune_set(load_corpus(toy_corpus))
    quiet = train_lora(model, tokenizer, rows, cfg, seed=0, adapter_dir=tmp_path / "quiet", work_dir=tmp_path / "w1",
                       log=lambda line: None)
    monkeypatch.setattr(finetune, "STEP_HEARTBEAT_SECONDS", 0.05)
    step = finetune._answer_loss_trainer

    def slow_trainer(tally=None):
        class Slow(step(tally)):
            def compute_loss(self, *args, **kwargs):
                clock.sleep(0.2)  # a step that outlasts the heartbeat
                return super().compute_loss(*args, **kwargs)
        return Slow

    monkeypatch.setattr(finetune, "_answer_loss_trainer", slow_trainer)
    lines: list[str] = []
    loud = train_lora(model, tokenizer, rows, cfg, seed=0, adapter_dir=tmp_path / "loud", work_dir=tmp_path / "w2",
                      log=lines.append)
    beats = [line for line in lines if "still running" in line]
    assert beats and beats[0].startswith("finetune: step 1/3 still running")
    clock.sleep(0.2)
    assert len([line for line in lines if "still running" in line]) == len(beats)  # no beat once training ended
    assert loud["loss"] == quiet["loss"]


def test_answer_only_logits_give_the_full_loss(toy_corpus, tiny_lm):
    """The trainer's loss (logits for answer positions only) equals the model's own loss over full logits."""
    from ragvsft.finetune import _Collator, _answer_loss_trainer

    model, tokenizer = load_lm(str(tiny_lm))
    rows = build_finetune_set(load_corpus(toy_corpus))
    batch = _Collator(tokenizer.pad_token_id)([encode_example(r, tokenizer, 512) for r in rows])
    reference = model(**batch).loss
    trainer = _answer_loss_trainer().__new__(_answer_loss_trainer())  # compute_loss needs no Trainer state
    ours = trainer.compute_loss(model, dict(batch))
    assert torch.allclose(ours, reference, rtol=1e-5)


def test_bfloat16_base_learns_like_float32(tmp_path, toy_corpus, tiny_lm):
    model, tokenizer = load_lm(str(tiny_lm))
    rows = build_finetune_set(load_corpus(toy_corpus))
    losses = {}
    for precision in ("float32", "bfloat16"):
        cfg = load_config(None, ["finetune.min_steps=0", "finetune.epochs=6", "finetune.batch_size=2", "finetune.learning_rate=0.01",
                                 f"finetune.precision={precision}"]).finetune
        figures = train_lora(model, tokenizer, rows, cfg, seed=0, adapter_dir=tmp_path / precision,
                             work_dir=tmp_path / f"work-{precision}")
        assert figures["precision"] == precision
        losses[precision] = [loss for _, loss in figures["loss"]]
    assert len(losses["float32"]) == len(losses["bfloat16"])
    assert abs(losses["bfloat16"][0] - losses["float32"][0]) < 0.01 * losses["float32"][0]
    assert abs(losses["bfloat16"][-1] - losses["float32"][-1]) < 0.05 * losses["float32"][-1]
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]


def test_curve_epochs():
    assert curve_epochs(4, 2) == [2, 4]
    assert curve_epochs(4, 4) == [1, 2, 3, 4]
    assert curve_epochs(1.5, 4) == [1, 2]  # the fractional last epoch is measured at the end of training
    assert curve_epochs(3, 0) == []


def test_learning_curve_bookkeeping(tmp_path, toy_corpus, tiny_lm):
    model, tokenizer = load_lm(str(tiny_lm))
    calls = []

    def evaluate(merged):
        assert not any("lora" in name for name, _ in merged.named_parameters())  # a merged, plain copy
        calls.append(merged.model.layers[0].self_attn.q_proj.weight.detach().float().clone())
        return {"seen": len(calls) / 10, "heldout": 0.0, "unanswerable_hallucination": 1.0, "style": 0.5}

    cfg = load_config(None, ["finetune.min_steps=0", "finetune.epochs=4", "finetune.batch_size=2", "finetune.curve_points=2"]).finetune
    figures = train_lora(model, tokenizer, build_finetune_set(load_corpus(toy_corpus)), cfg, seed=0,
                         adapter_dir=tmp_path / "adapter", work_dir=tmp_path / "work", evaluate=evaluate)
    assert [p["epoch"] for p in figures["curve"]] == [0.0, 2.0, 4.0]
    assert [p["seen"] for p in figures["curve"]] == [0.1, 0.2, 0.3]
    assert figures["curve"][0]["loss"] is None and figures["curve"][-1]["loss"] == figures["loss"][-1][1]
    assert "seconds" not in figures["curve"][0] and figures["curve_seconds"] >= 0
    saved = json.loads((tmp_path / "adapter" / "training_log.json").read_text())
    assert saved["curve"] == figures["curve"]
    # Each point measured its own snapshot: the base before training, the saved adapter at the end.
    final = merged_model(model, tmp_path / "adapter", torch.float32).model.layers[0].self_attn.q_proj.weight
    assert torch.allclose(calls[0], model.model.layers[0].self_attn.q_proj.weight.float(), atol=1e-2)
    assert torch.allclose(calls[-1], final, atol=1e-2) and not torch.allclose(calls[1], calls[-1], atol=1e-4)


def test_lora_from_a_first_layer_leaves_the_lower_layers_alone(tmp_path, toy_corpus, tiny_lm):
    from safetensors.torch import load_file

    model, tokenizer = load_lm(str(tiny_lm))
    rows = build_finetune_set(load_corpus(toy_corpus))
    cfg = load_config(None, ["finetune.min_steps=0", "finetune.epochs=1", "finetune.batch_size=2", "finetune.first_lora_layer=1"]).finetune
    upper = train_lora(model, tokenizer, rows, cfg, seed=0, adapter_dir=tmp_path / "upper", work_dir=tmp_path / "w")
    every = train_lora(model, tokenizer, rows, cfg.model_copy(update={"first_lora_layer": 0}), seed=0,
                       adapter_dir=tmp_path / "every", work_dir=tmp_path / "w")
    names = list(load_file(tmp_path / "upper" / "adapter_model.safetensors"))
    assert names and all(".layers.1." in n for n in names)  # the tiny model's two layers: only the upper one
    assert 2 * upper["trainable_params"] == every["trainable_params"]
    merged = merged_model(model, tmp_path / "upper", torch.float32)
    lower = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(merged.state_dict()[lower], model.state_dict()[lower])
    with pytest.raises(ValueError, match="first_lora_layer: 2, but the model has 2 layers"):
        train_lora(model, tokenizer, rows, cfg.model_copy(update={"first_lora_layer": 2}), seed=0,
                   adapter_dir=tmp_path / "none", work_dir=tmp_path / "w")


def test_a_small_set_trains_whole_epochs_until_the_minimum_steps():
    from ragvsft.finetune import planned_epochs

    cfg = load_config(None, ["finetune.epochs=4", "finetune.batch_size=16", "finetune.min_steps=40"]).finetune
    assert planned_epochs(160, cfg) == 4  # the quick profile: 10 steps an epoch, 40 steps already
    assert planned_epochs(62, cfg) == 10  # 31 facts x 2 questions: 4 steps an epoch, so 10 epochs
    assert planned_epochs(62, cfg.model_copy(update={"min_steps": 0})) == 4


def test_the_stopping_rule_stops_at_the_first_learnt_epoch_past_the_plan():
    from transformers import TrainerControl, TrainerState

    from ragvsft.finetune import _until_learnt

    def run(shares, planned, budget, target=0.9):
        tally, learnt = {"learnt": 0, "examples": 0}, []
        rule, state, control = _until_learnt(tally, learnt, planned, budget, target), TrainerState(), TrainerControl()
        for epoch, share in enumerate(shares, start=1):
            tally.update(learnt=round(share * 100), examples=100)
            state.epoch = float(epoch)
            rule.on_epoch_end(None, state, control)
            if control.should_training_stop:
                return epoch, learnt
        return None, learnt

    assert run([0.2, 0.95, 0.99], planned=2, budget=6) == (2, [[1.0, 0.2], [2.0, 0.95]])
    assert run([0.95, 0.5, 0.92], planned=2, budget=6)[0] == 3  # never before the planned epochs
    assert run([0.2, 0.5, 0.7], planned=2, budget=3)[0] is None  # the budget runs out
    assert run([0.99, 0.99], planned=2, budget=2)[0] is None  # no budget beyond the plan: the plan is trained


def test_training_records_why_it_stopped_and_what_it_learnt(tmp_path, toy_corpus, tiny_lm):
    model, tokenizer = load_lm(str(tiny_lm))
    rows = build_finetune_set(load_corpus(toy_corpus))
    cfg = load_config(None, ["finetune.min_steps=6", "finetune.epochs=1", "finetune.batch_size=2", "finetune.curve_points=0",
                             "finetune.max_epochs=4", "finetune.until_learnt=1.0"]).finetune
    figures = train_lora(model, tokenizer, rows, cfg, seed=0, adapter_dir=tmp_path / "a", work_dir=tmp_path / "w")
    assert figures["planned_epochs"] == 2 and figures["epochs"] == 4 and figures["stopped"] == "budget"
    assert [e for e, _ in figures["learnt"]] == [1.0, 2.0, 3.0, 4.0] and 0 <= figures["learnt_share"] <= 1
    plain = cfg.model_copy(update={"max_epochs": None, "min_steps": 0})
    figures = train_lora(model, tokenizer, rows, plain, seed=0, adapter_dir=tmp_path / "b", work_dir=tmp_path / "w")
    assert figures["epochs"] == 1 and figures["stopped"] == "epochs" and figures["steps"] == 3


def test_the_adapter_loads_elsewhere_and_the_sets_read_as_trl_prompt_completion(tiny_run, tiny_lm, tmp_path,
                                                                               monkeypatch):
    """The saved adapter names its base by name (not this machine's path), carries a model card, and loads from
    another folder with peft given the base model's folder; the TRL export holds exactly the prompts trained on."""
    import json
    import shutil

    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragvsft.arms import closed_book_messages, reader_messages
    from ragvsft.chat import render, training_answer
    from ragvsft.files import read_jsonl
    from ragvsft.finetune import encode_example, merged_model

    _, out = tiny_run
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_lm.name
    card = (out / "adapter" / "README.md").read_text()
    assert f"base_model: {tiny_lm.name}" in card and "PeftModel.from_pretrained" in card
    elsewhere = tmp_path / "elsewhere"  # another machine: the adapter and a copy of its base, under the base's name
    moved = shutil.copytree(out / "adapter", elsewhere / "adapter")
    shutil.copytree(tiny_lm, elsewhere / tiny_lm.name)
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    ids = torch.tensor([[1, 5, 9, 12]])
    expected = merged_model(base, out / "adapter", torch.float32)(ids).logits
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(elsewhere / tiny_lm.name), str(moved))
    monkeypatch.chdir(elsewhere)
    auto = AutoPeftModelForCausalLM.from_pretrained("adapter")
    for model in (loaded, auto):
        assert torch.allclose(model.eval()(ids).logits, expected, atol=1e-4)

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    for name, build in (("finetune_set", lambda r: closed_book_messages(r["question"])),
                        ("reader_set", lambda r: reader_messages(r["question"], r["chunks"]))):
        rows, trl = read_jsonl(out / f"{name}.jsonl"), read_jsonl(out / f"{name}.trl.jsonl")
        qa = [r for r in rows if r["kind"] != "passage"]
        assert len(trl) == len(qa) > 0
        for row, exported in zip(qa, trl):
            assert exported["prompt"] == build(row) and exported["completion"][0]["content"] == row["answer"]
            text = render(tokenizer, exported["prompt"]) + training_answer(tokenizer, exported["completion"][0]["content"])
            assert tokenizer(text, add_special_tokens=False)["input_ids"][:512] == encode_example(row, tokenizer, 512)["input_ids"]


def _random_adapter(model, folder, seed: int) -> None:
    """A LoRA adapter with random (non-zero) weights on every attention projection, saved to `folder`."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(copy.deepcopy(model), config).save_pretrained(str(folder))


def test_named_adapters_on_one_base_answer_as_the_merged_copies(tmp_path, tiny_lm):
    """models.adapters: every adapter loaded by name onto one shared base gives the tokens and hidden states of
    merging it into its own copy, whichever adapter was used last; the base view has every adapter disabled."""
    from conftest import FACTS
    from ragvsft.arms import PREFIX_MIN_TOKENS, generate, prompt_states
    from ragvsft.finetune import arm_models

    model, tokenizer = load_lm(str(tiny_lm))
    for name, seed in (("closed", 1), ("fold-0", 2), ("fold-1", 3)):
        _random_adapter(model, tmp_path / name, seed)
    adapters = {"closed_book": tmp_path / "closed", "reader": [tmp_path / "fold-0", tmp_path / "fold-1"]}
    merged = arm_models(model, adapters, torch.float32, "cpu", "merged")
    named = arm_models(model, adapters, torch.float32, "cpu", "named")
    assert named["base"]._shared is named["closed_book"]._shared is named["reader"][1]._shared  # one base
    # a system prompt every question shares: generated through the shared-prefix attention on both kinds of model
    system = {"role": "system", "content": "You answer questions about the company's documents in one sentence."}
    asked = [[system, {"role": "user", "content": q}] for f in FACTS for q in f["train_questions"]][:4]
    assert generate(named["closed_book"], tokenizer, asked, 8, 4)[1].reused_tokens >= PREFIX_MIN_TOKENS
    pairs = [(merged["base"], named["base"]), (merged["closed_book"], named["closed_book"]),
             (merged["reader"][0], named["reader"][0]), (merged["reader"][1], named["reader"][1])]
    answers = []
    for one, other in pairs + pairs[::-1]:  # switching back and forth between adapters
        expected = [g.answer for g in generate(one, tokenizer, asked, 8, 4)]
        assert [g.answer for g in generate(other, tokenizer, asked, 8, 4)] == expected
        assert prompt_states(other, tokenizer, asked, [1, 2], 4) == pytest.approx(
            prompt_states(one, tokenizer, asked, [1, 2], 4), abs=1e-4)
        answers.append(expected)
    assert len({tuple(a) for a in answers[:4]}) > 1  # the adapters do change the answers


@pytest.mark.parametrize("device,expected", [("cpu", "merged"), ("cuda", "named"), ("mps", "named")])
def test_auto_merges_on_the_cpu_and_names_adapters_on_an_accelerator(device, expected):
    from ragvsft.models import resolve_adapters

    assert resolve_adapters("auto", device) == expected
    assert resolve_adapters("named", "cpu") == "named" and resolve_adapters("merged", "cuda") == "merged"
