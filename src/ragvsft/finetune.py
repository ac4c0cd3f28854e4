"""Fine-tuning side: the fine-tuning set built from the corpus, and a LoRA adapter trained on it with peft.

Every fact's train questions are answered with its statement in the house-style `answer_template` (optionally also
document chunks as plain text). Probe and unanswerable questions never enter the set. Training goes through
transformers' `Trainer`, so the same code runs on a laptop CPU or, under `accelerate launch`, on several GPUs; the loss
covers the answer tokens only. The adapter is saved as safetensors with its training log.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .config import FinetuneConfig
from .corpus import Corpus
from .files import atomic_write_json
from .models import fresh_copy

IGNORE = -100


def build_finetune_set(corpus: Corpus, passages: list[str] | None = None) -> list[dict]:
    """Rows of the fine-tuning set: one per (fact, train question), plus plain-text passages when given."""
    rows = [{"kind": "qa", "fact_id": fact.id, "question": question, "answer": corpus.style.answer(fact.statement)}
            for fact in corpus.facts for question in fact.train_questions]
    rows += [{"kind": "passage", "text": text} for text in passages or []]
    return rows


def encode_example(row: dict, tokenizer, max_length: int) -> dict:
    """Token ids and labels; labels mask the prompt (-100) so the loss covers the answer tokens only."""
    if row["kind"] == "passage":
        ids = tokenizer(row["text"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"][:max_length]
        return {"input_ids": ids, "labels": list(ids)}
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}], tokenize=False,
                                           add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(row["answer"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


class _Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        pad = lambda seq, value: seq + [value] * (width - len(seq))  # noqa: E731
        return {
            "input_ids": torch.tensor([pad(b["input_ids"], self.pad_id) for b in batch]),
            "attention_mask": torch.tensor([pad([1] * len(b["input_ids"]), 0) for b in batch]),
            "labels": torch.tensor([pad(b["labels"], IGNORE) for b in batch]),
        }


def _loss_logger(log: Callable[[str], None]):
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        """One short line every tenth of training instead of Trainer's per-step dictionaries."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            every = max(1, state.max_steps // 10)
            if logs and "loss" in logs and (state.global_step % every == 0 or state.global_step == state.max_steps):
                log(f"finetune: step {state.global_step}/{state.max_steps}, loss {logs['loss']:.3f}")

    return LossLog()


def train_lora(model, tokenizer, rows: list[dict], cfg: FinetuneConfig, seed: int, adapter_dir: Path,
               bf16: bool = False, work_dir: Path | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train a LoRA adapter on `rows`, save it to `adapter_dir` (safetensors) and return the training figures."""
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments, set_seed

    set_seed(seed)
    examples = [encode_example(r, tokenizer, cfg.max_length) for r in rows]
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    trainable, total = peft_model.get_nb_trainable_parameters()
    args = TrainingArguments(
        output_dir=str(work_dir or Path(adapter_dir).parent / ".trainer"),
        num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.batch_size,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
        report_to=[], seed=seed, data_seed=seed, bf16=bf16, use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True, log_level="warning",
    )
    trainer = Trainer(model=peft_model, args=args, train_dataset=examples, data_collator=_Collator(tokenizer.pad_token_id))
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    if log:
        trainer.add_callback(_loss_logger(log))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    loss = [[entry["step"], round(entry["loss"], 4)] for entry in trainer.state.log_history if "loss" in entry]
    figures = {"examples": len(examples), "epochs": cfg.epochs, "steps": trainer.state.global_step,
               "trainable_params": int(trainable), "total_params": int(total),
               "trainable_share": round(trainable / total, 5), "seconds": round(seconds, 2),
               "seconds_per_example": round(seconds / max(1, len(examples) * cfg.epochs), 4), "loss": loss}
    atomic_write_json(Path(adapter_dir) / "training_log.json", figures)
    peft_model.unload()  # leave the caller's base model without LoRA layers
    return figures


def merged_model(base_model, adapter_dir: Path, dtype: torch.dtype):
    """The base model with the LoRA update merged into its float32 weights, then cast to `dtype` (a fresh copy:
    see models.fresh_copy). The base model is left untouched."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(copy.deepcopy(base_model), str(adapter_dir)).merge_and_unload()
    return fresh_copy(merged, dtype)
