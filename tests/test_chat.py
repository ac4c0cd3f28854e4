"""Prompt formats for any model family (chat.py): the model's chat template, a template without a system role, and
the plain question/answer format of a base model; where an answer ends; and a whole run with each."""

from __future__ import annotations

import json

import pytest

from conftest import SYSTEMLESS_TEMPLATE, MockEncoder, build_tiny_lm, tiny_config, write_corpus
from ragvsft import chat

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who runs payroll?"}]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("formats")
    folders = {"chat": build_tiny_lm(root / "chat"), "systemless": build_tiny_lm(root / "systemless", SYSTEMLESS_TEMPLATE),
               "base": build_tiny_lm(root / "base", None)}
    return {name: AutoTokenizer.from_pretrained(folder) for name, folder in folders.items()}, folders


def test_each_template_gets_its_format_and_keeps_every_message(tokenizers):
    toks, _ = tokenizers
    assert [chat.prompt_format(toks[n]) for n in ("chat", "systemless", "base")] == [chat.CHAT, chat.FOLDED, chat.PLAIN]
    assert chat.render(toks["chat"], CONVERSATION).endswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho runs payroll?<|im_end|>\n<|im_start|>assistant\n")
    # the system text opens the first user turn; an empty system message is left out, not sent as an empty turn
    assert chat.render(toks["systemless"], CONVERSATION) == (
        "<start_of_turn>user\nBe brief.\n\nWho runs payroll?<end_of_turn>\n<start_of_turn>model\n")
    empty = [{"role": "system", "content": ""}, CONVERSATION[1]]
    assert chat.render(toks["systemless"], empty) == "<start_of_turn>user\nWho runs payroll?<end_of_turn>\n<start_of_turn>model\n"
    shot = [CONVERSATION[0], {"role": "user", "content": "Q1?"}, {"role": "assistant", "content": "A1."}, CONVERSATION[1]]
    assert chat.render(toks["base"], shot) == "Be brief.\n\nQuestion: Q1?\nAnswer: A1.\n\nQuestion: Who runs payroll?\nAnswer:"
    assert chat.render(toks["base"], empty) == "Question: Who runs payroll?\nAnswer:"
    assert all(chat.template_problem(t) is None for t in toks.values())


def test_an_answer_ends_with_the_templates_own_end_of_turn(tokenizers):
    toks, folders = tokenizers
    assert chat.end_of_turn(toks["chat"]) == "<|im_end|>"  # SmolLM2's, also its end-of-sequence token
    assert chat.end_of_turn(toks["systemless"]) == "<end_of_turn>"
    assert chat.end_of_turn(toks["base"]) == toks["base"].eos_token
    assert chat.training_answer(toks["systemless"], "Lina.") == "Lina.<end_of_turn>"
    assert chat.training_answer(toks["base"], "Lina.") == " Lina." + toks["base"].eos_token

    class Model:  # the model's own stop tokens come from its generation config (Gemma lists two)
        class generation_config:
            eos_token_id = [7, 9]

    turn = toks["systemless"].convert_tokens_to_ids("<end_of_turn>")
    assert chat.stop_ids(Model, toks["systemless"]) == sorted({7, 9, toks["systemless"].eos_token_id, turn})
    assert chat.stop_strings(toks["base"]) == ["\nQuestion:"] and chat.stop_strings(toks["chat"]) == []
    assert chat.cut_answer(" Lina Park.\nQuestion: And who", chat.stop_strings(toks["base"])) == "Lina Park."


def test_a_template_that_fails_is_reported_before_any_stage(tokenizers, tmp_path):
    import shutil

    from ragvsft.files import InputError
    from ragvsft.run import run_experiment

    _, folders = tokenizers
    broken = shutil.copytree(folders["chat"], tmp_path / "broken")
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ raise_exception('this template is broken') }}"
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    (broken / "chat_template.jinja").unlink(missing_ok=True)
    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(InputError, match="chat template fails on a test conversation .*this template is broken"):
        run_experiment(tiny_config(corpus, broken, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["chat", "systemless", "base"])
def test_the_quick_profile_runs_every_arm_with_a_chat_systemless_or_base_model(tokenizers, tmp_path, kind):
    """experiments/quick.yaml as shipped, only the model (and the mock encoder, which is not tuned) replaced."""
    from conftest import REPO
    from ragvsft.config import load_config
    from ragvsft.files import read_jsonl
    from ragvsft.run import run_experiment

    _, folders = tokenizers
    out = tmp_path / "run"
    cfg = load_config(REPO / "experiments" / "quick.yaml", [f"models.lm={folders[kind]}", "index.tune_embedder=false"],
                      corpus=str(write_corpus(tmp_path / "corpus")), out=str(out))
    run_experiment(cfg, encoder=MockEncoder())
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"base", "prompt", "fewshot", "rag", "lora", "lora_rag", "raft"}
    rows = read_jsonl(out / "predictions.jsonl")
    assert all("<end_of_turn>" not in r["answer"] and "Question:" not in r["answer"] for r in rows)
    first = read_jsonl(out / "finetune_set.jsonl")[0]
    from ragvsft.finetune import encode_example
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders[kind])
    example = encode_example(first, tokenizer, 512)
    learnt = tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != -100])
    assert learnt.endswith({"chat": "<|im_end|>", "systemless": "<end_of_turn>"}.get(kind, tokenizer.eos_token))
