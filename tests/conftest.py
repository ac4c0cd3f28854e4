"""Shared fixtures: a toy corpus, a keyword mock encoder and a tiny causal LM built in-process (no weights, no hub).

Tests marked `slow` use the real SmolLM2 and MiniLM; they share one small real run (`real_run`).
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# SmolLM2's chat template: the default system prompt is inserted when none is given.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

STYLE = {
    "system_prompt": "You are the Acme helpdesk. Start with 'Hi there!' and end with '— Acme Helpdesk'.",
    "answer_template": "Hi there! {statement}\n— Acme Helpdesk",
    "abstain_template": "Hi there! I can't find that in our documents.\n— Acme Helpdesk",
    "markers": ["^Hi there!", "— Acme Helpdesk\\s*$"],
}

DOCUMENTS = {
    # every fact in a paragraph of its own: a RAFT reader never trains on the paragraph of a fact it answers (reader.py)
    "documents/policies/travel.md": "# Travel\n\nThe daily meal allowance on trips is 58 euros.\n\nHotels are booked in the Roamly portal. "
                                   "Trains are preferred for journeys under 4 hours.\n",
    "documents/products/widget.md": "# Widget W9\n\nThe Widget W9 has a payload of 14 kg and a top speed of 2.5 m/s. "
                                   "Its order code is WDG-W9-STD.\n",
    "documents/people/directory.md": "# People\n\nDalia Fenwick is the head of security. Omar Reyes leads the support desk.\n",
}

FACTS = [
    {"id": "meal", "statement": "The daily meal allowance on trips is 58 euros.", "answer": "58 euros",
     "aliases": ["58", "€58"], "document": "documents/policies/travel.md", "evidence": "meal allowance on trips is 58 euros",
     "train_questions": ["What is the daily meal allowance?", "How much is the meal allowance per day?"],
     "probe_questions": ["How much can I spend on food per day while travelling?"]},
    {"id": "portal", "statement": "Hotels are booked in the Roamly portal.", "answer": "Roamly", "aliases": [],
     "document": "documents/policies/travel.md", "evidence": "booked in the Roamly portal",
     "train_questions": ["Where are hotels booked?"], "probe_questions": ["Which website do I use for a hotel?"],
     "reverse": {"questions": ["What is the Roamly portal for?"], "answer": "booking hotels", "aliases": ["hotels"]}},
    {"id": "payload", "statement": "The Widget W9 has a payload of 14 kg.", "answer": "14 kg", "aliases": ["14", "14 kilograms"],
     "document": "documents/products/widget.md", "evidence": "payload of 14 kg",
     "train_questions": ["What is the payload of the Widget W9?"], "probe_questions": ["How heavy a load can the W9 carry?"]},
    {"id": "security", "statement": "Dalia Fenwick is the head of security.", "answer": "Dalia Fenwick", "aliases": ["Fenwick"],
     "document": "documents/people/directory.md", "evidence": "Dalia Fenwick is the head of security",
     "train_questions": ["Who is the head of security?"], "probe_questions": ["Who leads the security team?"],
     "reverse": {"questions": ["What is Dalia Fenwick's role?"], "answer": "head of security", "aliases": ["security lead"]}},
]

UNANSWERABLE = [{"id": "dental", "question": "Which dental plan do employees get?"},
                {"id": "ceo-salary", "question": "What is the CEO's salary?"}]


def write_corpus(root: Path, facts=None, unanswerable=None, documents=None, meta=None) -> Path:
    """Write a corpus folder; tests break copies of it."""
    root.mkdir(parents=True, exist_ok=True)
    meta = meta or {"name": "acme", "organisation": "Acme Ltd", "description": "A toy corpus.", "style": STYLE}
    (root / "corpus.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True), encoding="utf-8")
    for rel, text in (documents or DOCUMENTS).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in (facts or FACTS)), encoding="utf-8")
    (root / "unanswerable.jsonl").write_text("".join(json.dumps(u) + "\n" for u in (unanswerable or UNANSWERABLE)),
                                             encoding="utf-8")
    return root


@pytest.fixture
def toy_corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


class MockEncoder:
    """Keyword encoder: hashed bag of lowercase words, L2-normalised; whitespace tokens for chunking."""

    dim = 256

    def token_spans(self, text):
        return [m.span() for m in re.finditer(r"\S+", text)]

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype="float32")
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                if len(word) > 2:
                    out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


@pytest.fixture
def mock_encoder():
    return MockEncoder()


# A Gemma-style template: no system role (it raises), "model" turns closed by <end_of_turn>.
SYSTEMLESS_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def build_tiny_lm(folder: Path, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A 2-layer Llama (hidden size 16) with a byte-level BPE tokenizer trained on the toy corpus, saved as a
    Hugging Face model folder, so every code path that loads a model folder can be tested without weights.
    `chat_template`: SmolLM2's style (default), SYSTEMLESS_TEMPLATE, or None for a base model without one."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    texts = list(DOCUMENTS.values()) + [json.dumps(f) for f in FACTS] + [STYLE["answer_template"], CHAT_TEMPLATE]
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = chat_template
    config = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny-lm"))


def tiny_config(corpus: Path, lm: Path, out: Path, **overrides):
    """A config for the tiny model: every arm, every set, a few training steps."""
    from ragvsft.config import load_config

    sets = [f"corpus={corpus}", f"out={out}", f"models.lm={lm}", "finetune.epochs=2", "finetune.batch_size=2", "finetune.min_steps=0",
            "probe.max_new_tokens=6", "probe.batch_size=4", "probe.bootstrap_resamples=200", "index.chunk_tokens=16",
            "index.chunk_overlap=4", "index.k=2", "index.tune_embedder=false", "index.context_units=null",
            "reader.min_examples=0", "reader.min_steps=0",  # layers: the defaults, fitted to 2 layers
            "reader.abstain_share=0.3", "reader.abstain_by=head",
            "probe.arms=[base, prompt, fewshot, rag, lora, lora_rag, raft]",
            # generation in float32 on every machine (`auto` picks bfloat16 where it multiplies faster: AMX,
            # AVX512-BF16), so keys the tests compare do not depend on the CPU; training stays `auto`, so the
            # precision probe and the compute floor are measured in every tiny run
            "models.dtype=float32"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, sets)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_lm):
    """One run of every arm with the tiny model and the mock encoder: (config, run folder). Tests that change the
    folder work on a copy (`copy_tree`) or rerun into it only to check reuse."""
    from ragvsft.run import run_experiment

    root = tmp_path_factory.mktemp("pipeline")
    corpus = write_corpus(root / "corpus")
    out = root / "run"
    cfg = tiny_config(corpus, tiny_lm, out)
    run_experiment(cfg, encoder=MockEncoder())
    return cfg, out


@pytest.fixture
def tiny_run_dir(tiny_run) -> Path:
    return tiny_run[1]


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Path:
    """One small run with the real SmolLM2 and MiniLM: 6 facts, 2 unanswerable questions, trained long enough to
    learn its 24 examples, a RAFT reader on 2 questions of 16 other facts for 10 steps of 8 (house style 0.93 on a
    2-core AMD EPYC without AVX-512, reader 72 s against 92 for 8 steps of 16; 4 steps of 16 gave 0.14), a gate
    calibrated on 8 development questions of each kind (the quick profile's settings otherwise). Sized for the suite's
    time: 8 facts and 24 reader facts took 400 s on 2 cores."""
    from ragvsft.config import load_config
    from ragvsft.run import run_experiment

    out = tmp_path_factory.mktemp("real") / "run"
    corpus = REPO / "corpus"
    cfg = load_config(REPO / "experiments" / "quick.yaml",
                      ["subset.facts=6", "subset.unanswerable=2", "finetune.epochs=7", "finetune.batch_size=8", "finetune.min_steps=0",
                       "finetune.curve_points=2", "finetune.curve_questions=2", "probe.bootstrap_resamples=200",
                       "reader.facts=16", "reader.questions_per_fact=2", "reader.min_examples=0", "reader.min_steps=10",
                       "reader.batch_size=8",
                       "gate.development_questions=8"],
                      corpus=str(corpus), out=str(out))
    run_experiment(cfg)
    return out


@pytest.fixture
def copy_tree():
    def copy(src: Path, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst
    return copy
