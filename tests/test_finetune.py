"""Fine-tuning side: the set never holds probe questions; the loss covers answer tokens; LoRA trains and saves."""

import json

import torch

from ragvsft.config import load_config
from ragvsft.corpus import load_corpus
from ragvsft.finetune import IGNORE, build_finetune_set, encode_example, merged_model, train_lora
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
    cfg = load_config(None, ["finetune.epochs=3", "finetune.batch_size=2", "finetune.learning_rate=0.01"]).finetune
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
