"""Fine-tuning side: the fine-tuning set built from the corpus, and a LoRA adapter trained on it with peft.

Every fact's train questions are answered with its statement in the house-style `answer_template` (optionally also
document chunks as plain text). Probe and unanswerable questions never enter the set. Training goes through
transformers' `Trainer` on `models.device` (a laptop CPU or one GPU; a run is one process, and `ragvsft sweep
--devices` places several runs on several GPUs); the loss covers the answer tokens only, and logits are computed only
there (the 49k-word vocabulary projection is the largest single matrix product of a 135M model). The frozen base is
held in the training precision (finetune.precision, measured: bfloat16 where it is fast, as on CPUs with AMX) while
the LoRA weights, their gradients and the optimiser stay in float32. Batches are formed from examples of similar length, so little compute goes to padding.
The LoRA weights are copied at several epochs; after training, the closed-book model with each copy answers a fixed
subset of seen, held-out and unanswerable questions (the learning curve, `curves` in results.json); nothing is
selected on those answers. The adapter is saved as
safetensors with its training log.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .precision import torch_dtype
from .arms import closed_book_messages, reader_messages
from .chat import render, training_answer
from .config import FinetuneConfig
from .corpus import Corpus
from .files import atomic_write_json
from .models import fresh_copy

IGNORE = -100


def build_finetune_set(corpus: Corpus, passages: list[str] | None = None, questions_per_fact: int | None = None) -> list[dict]:
    """Rows of the fine-tuning set: one per (fact, train question) — the first `questions_per_fact` of each fact's
    train questions (paraphrases; None: all) — plus plain-text passages when given."""
    rows = [{"kind": "qa", "fact_id": fact.id, "question": question, "answer": corpus.style.answer(fact.statement)}
            for fact in corpus.facts for question in fact.train_questions[:questions_per_fact]]
    rows += [{"kind": "passage", "text": text} for text in passages or []]
    return rows


def encode_example(row: dict, tokenizer, max_length: int) -> dict:
    """Token ids and labels; labels mask the prompt (-100) so the loss covers the answer tokens only. Kinds: "qa"
    (closed-book question), "reader" (retrieved chunks + question, see reader.py), "passage" (plain text)."""
    if row["kind"] == "passage":
        ids = tokenizer(row["text"] + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"][:max_length]
        return {"input_ids": ids, "labels": list(ids)}
    messages = (reader_messages(row["question"], row["chunks"]) if row["kind"] == "reader"
                else closed_book_messages(row["question"]))
    prompt_ids = tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"]
    # The answer ends with the template's own end of turn (SmolLM2: <|im_end|>, its end-of-sequence token too).
    answer_ids = tokenizer(training_answer(tokenizer, row["answer"]), add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


def trl_rows(rows: list[dict]) -> list[dict]:
    """The set in the conversational prompt-completion format TRL's SFTTrainer reads (and axolotl, LLaMA-Factory):
    `prompt` the messages the model was trained on, `completion` the answer it learnt, and the row's fact. Plain-text
    passages (finetune.include_passages) are left out: such a dataset holds one format."""
    out = []
    for row in rows:
        if row["kind"] == "passage":
            continue
        messages = (reader_messages(row["question"], row["chunks"]) if row["kind"] == "reader"
                    else closed_book_messages(row["question"]))
        out.append({"prompt": messages, "completion": [{"role": "assistant", "content": row["answer"]}],
                    "fact_id": row.get("fact_id")})
    return out


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


def _answer_loss_trainer(tally: dict | None = None):
    from transformers import Trainer

    class AnswerLossTrainer(Trainer):
        """Cross-entropy on the answer tokens, with logits computed for those positions only. `tally` counts the
        examples whose every answer token is the most likely next token (teacher-forced greedy: the model would
        generate the answer): the "learnt" share of an epoch, for free from the same logits."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            targets = labels[:, 1:]
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = targets != IGNORE  # position t predicts token t + 1
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            wanted = targets[targets != IGNORE]
            loss = F.cross_entropy(outputs.logits.float(), wanted)
            if tally is not None:
                with torch.no_grad():
                    missed = (outputs.logits.argmax(dim=-1) != wanted).float()
                    rows = keep.nonzero()[:, 0]
                    per_example = torch.zeros(labels.shape[0]).index_add_(0, rows.cpu(), missed.cpu())
                    answered = torch.zeros(labels.shape[0]).index_add_(0, rows.cpu(), torch.ones_like(missed).cpu())
                    tally["learnt"] += int(((per_example == 0) & (answered > 0)).sum())
                    tally["examples"] += int((answered > 0).sum())
            return (loss, outputs) if return_outputs else loss

    return AnswerLossTrainer


def planned_epochs(examples: int, cfg: FinetuneConfig) -> float:
    """`finetune.epochs`, raised to whole epochs until training takes at least `finetune.min_steps` optimizer steps
    (a small corpus otherwise stops before it has learnt its set)."""
    per_epoch = max(1, math.ceil(examples / cfg.batch_size))
    return max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch)) if cfg.min_steps else cfg.epochs


def _until_learnt(tally: dict, learnt: list, planned: float, budget: float, target: float):
    from transformers import TrainerCallback

    class UntilLearnt(TrainerCallback):
        """At each epoch's end: the share of examples learnt in it; past the planned epochs, within a larger budget,
        training stops at the first epoch whose share reaches the target."""

        def on_epoch_end(self, args, state, control, **kwargs):
            share = tally["learnt"] / tally["examples"] if tally["examples"] else 0.0
            learnt.append([round(state.epoch, 3), round(share, 4)])
            tally.update(learnt=0, examples=0)
            if budget > planned and state.epoch >= planned - 1e-9 and share >= target:
                control.should_training_stop = True

    return UntilLearnt()


def curve_epochs(epochs: float, points: int) -> list[int]:
    """The whole epochs after which the learning curve is measured: `points` of them, evenly spread, the last one
    always included (a fractional last epoch is measured at the end of training)."""
    last = math.ceil(epochs)
    if points <= 0:
        return []
    return sorted({max(1, round(last * i / points)) for i in range(1, points + 1)})


STEP_HEARTBEAT_SECONDS = 6.0  # the longest one training step runs without a line (as arms.HEARTBEAT_SECONDS)


def _callbacks(log: Callable[[str], None] | None, epochs_at: list[int], snapshots: list):
    from peft import get_peft_model_state_dict
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One short loss line every tenth of training; a copy of the LoRA weights at the learning curve's epochs.

        Only the adapter weights (a few MB) are copied here; the curve is measured after training, so generation
        never interleaves with training steps and the training time stays a clean figure."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if epochs_at:
                self._snapshot(0.0, model, None)

        last = step_began = time.perf_counter()
        step_seconds = 0.0

        beating: threading.Event | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            # A step longer than STEP_HEARTBEAT_SECONDS (a long batch of the reader's on a slow CPU: 15 s between
            # lines on a 2-core AMX host) says it is still running, from a thread, until it ends.
            if log:
                self.beating = threading.Event()
                threading.Thread(target=self._beat, args=(self.beating, state.global_step + 1, state.max_steps),
                                 daemon=True).start()

        def on_step_end(self, args, state, control, **kwargs):
            if self.beating is not None:
                self.beating.set()

        def _beat(self, stopped: threading.Event, step: int, steps: int):
            began = time.perf_counter()
            while not stopped.wait(STEP_HEARTBEAT_SECONDS):
                self.last = time.perf_counter()
                log(f"finetune: step {step}/{steps} still running, {self.last - began:.0f} s so far")

        def on_log(self, args, state, control, logs=None, **kwargs):
            # Every tenth of training, and where steps are slow whenever waiting for the next step would leave more
            # than STEP_HEARTBEAT_SECONDS without a line (a 2-core AMX host took 5-7 s a step: "more than 10 s since"
            # left 15 s gaps).
            now = time.perf_counter()
            self.step_seconds, self.step_began = now - self.step_began, now
            every = max(1, state.max_steps // 10)
            due = state.global_step % every == 0 or state.global_step == state.max_steps
            if log and logs and "loss" in logs and (due or now - self.last + self.step_seconds > STEP_HEARTBEAT_SECONDS):
                self.last = now
                log(f"finetune: step {state.global_step}/{state.max_steps}, loss {logs['loss']:.3f}")

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            finished = state.global_step >= state.max_steps or control.should_training_stop
            if epochs_at and (math.ceil(state.epoch - 1e-9) in epochs_at or finished):
                losses = [e["loss"] for e in state.log_history if "loss" in e]
                self._snapshot(round(state.epoch, 3), model, losses[-1] if losses else None)

        def _snapshot(self, epoch, model, loss):
            if snapshots and snapshots[-1][0] == epoch:
                return
            weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
            snapshots.append((epoch, None if loss is None else round(loss, 4), weights))

    return [Progress()]


def _measure_curve(peft_model, snapshots: list, evaluate: Callable, log: Callable[[str], None] | None) -> list[dict]:
    """The learning curve: the closed-book model with each snapshot's LoRA weights, merged into a fresh copy
    (a peft-wrapped model generated 2-3x slower, see models.fresh_copy), answering the curve's questions."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    final = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    curve = []
    for epoch, loss, weights in snapshots:
        set_peft_model_state_dict(peft_model, weights)
        merged = fresh_copy(copy.deepcopy(peft_model).merge_and_unload(), peft_model.get_base_model().dtype)
        point = {"epoch": epoch, **evaluate(merged), "loss": loss}
        curve.append(point)
        if log:
            log(f"finetune: learning curve measured at epoch {epoch:g}" + (f" (loss {loss:.3f})" if loss is not None else ""))
    set_peft_model_state_dict(peft_model, final)
    return curve


def train_lora(model, tokenizer, rows: list[dict], cfg: FinetuneConfig, seed: int, adapter_dir: Path,
               work_dir: Path | None = None, log: Callable[[str], None] | None = None,
               evaluate: Callable | None = None, device: str = "cpu") -> dict:
    """Train a LoRA adapter on `rows`, save it to `adapter_dir` (safetensors) and return the training figures.

    The caller's model is not changed: training runs on a fresh copy whose frozen weights are in `cfg.precision`.
    `evaluate(model) -> dict` (optional) measures the learning curve at `cfg.curve_points` epochs (the run stores
    its answers; see stages.finetune.curve_figures)."""
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, ProgressCallback, TrainingArguments, set_seed

    set_seed(seed)
    examples = [encode_example(r, tokenizer, cfg.max_length) for r in rows]
    layers = model.config.num_hidden_layers
    if cfg.first_lora_layer >= layers:
        raise ValueError(f"finetune.first_lora_layer: {cfg.first_lora_layer}, but the model has {layers} layers")
    # Frozen layers below the first adapted one need no backward pass: that is where the time goes.
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM",
                      layers_to_transform=list(range(cfg.first_lora_layer, layers)) if cfg.first_lora_layer else None)
    # autocast_adapter_dtype keeps the LoRA weights in float32 over a bfloat16 base: small updates survive rounding.
    # Eager attention: on a CPU, the fused attention kernel's backward pass took 18% of a training step on these
    # 50-80-token examples; the plain matmul version is faster at this length and gives the same gradients.
    trainee = fresh_copy(model, torch_dtype(cfg.precision), attention="eager").train()
    peft_model = get_peft_model(trainee, lora, autocast_adapter_dtype=True)
    trainable, total = peft_model.get_nb_trainable_parameters()
    planned = planned_epochs(len(examples), cfg)
    budget = max(planned, cfg.max_epochs or planned)
    args = TrainingArguments(
        output_dir=str(work_dir or Path(adapter_dir).parent / ".trainer"),
        num_train_epochs=budget, learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.batch_size,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
        report_to=[], seed=seed, data_seed=seed, use_cpu=device == "cpu",  # else Trainer takes the accelerator
        train_sampling_strategy="group_by_length", dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=True, log_level="warning",
    )
    tally, learnt = {"learnt": 0, "examples": 0}, []
    trainer = _answer_loss_trainer(tally)(model=peft_model, args=args, train_dataset=examples,
                                          data_collator=_Collator(tokenizer.pad_token_id))
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    snapshots: list = []
    epochs_at = curve_epochs(planned, cfg.curve_points) if evaluate is not None else []
    # The stopping rule first: the curve's last snapshot must see the stop it decides.
    trainer.add_callback(_until_learnt(tally, learnt, planned, budget, cfg.until_learnt))
    for callback in _callbacks(log, epochs_at, snapshots):
        trainer.add_callback(callback)
    start = time.perf_counter()
    try:
        trainer.train()
    finally:  # the Trainer's scratch folder (no checkpoints are saved in it)
        shutil.rmtree(args.output_dir, ignore_errors=True)
    train_seconds = time.perf_counter() - start
    peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    start = time.perf_counter()
    curve = _measure_curve(peft_model, snapshots, evaluate, log) if snapshots else []
    curve_seconds = time.perf_counter() - start
    loss = [[entry["step"], round(entry["loss"], 4)] for entry in trainer.state.log_history if "loss" in entry]
    trained = trainer.state.epoch or planned
    tokens = round(sum(len(e["input_ids"]) for e in examples) * trained)
    share = learnt[-1][1] if learnt else None
    stopped = ("learnt" if trained < budget - 1e-9 else "budget" if budget > planned
               else "min_steps" if planned > cfg.epochs else "epochs")
    if log and share is not None:
        log(f"finetune: {trained:g} epochs ({stopped}); in the last one the model reproduced {100 * share:.0f}% of its "
            "training answers token for token")
    figures = {"examples": len(examples), "epochs": round(trained, 3), "planned_epochs": planned, "stopped": stopped,
               "learnt": learnt, "learnt_share": share, "steps": trainer.state.global_step,
               "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate, "lora_r": cfg.lora_r,
               "precision": cfg.precision, "trainable_params": int(trainable), "total_params": int(total),
               "trainable_share": round(trainable / total, 5), "seconds": round(train_seconds, 2),
               "curve_seconds": round(curve_seconds, 2),
               "seconds_per_example": round(train_seconds / max(1, len(examples) * cfg.epochs), 4),
               "tokens": tokens, "tokens_per_second": round(tokens / max(train_seconds, 1e-9), 1), "loss": loss,
               "curve": curve}
    atomic_write_json(Path(adapter_dir) / "training_log.json", figures)
    return figures


def portable_adapter(adapter_dir: Path, base_name: str, tokenizer) -> None:
    """Name the adapter's base model by its name, not by this machine's path to it (peft writes the folder the base
    was loaded from), and save the tokenizer beside it, so the folder loads elsewhere: PeftModel.from_pretrained(base,
    adapter_dir), or AutoPeftModelForCausalLM.from_pretrained(adapter_dir) where the base's name resolves."""
    tokenizer.save_pretrained(str(adapter_dir))
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_name
    atomic_write_json(path, config)


def merged_model(base_model, adapter_dir: Path, dtype: torch.dtype, device: str = "cpu"):
    """The base model with the LoRA update merged into its float32 weights, then cast to `dtype` on `device` (a fresh
    copy: see models.fresh_copy). The base model is left untouched."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(copy.deepcopy(base_model), str(adapter_dir)).merge_and_unload()
    return fresh_copy(merged, dtype, device=device)


class SharedBase:
    """One copy of the base model in the generation dtype on its device, with LoRA adapters loaded onto it by name
    (peft `load_adapter`); `view(name)` is used like a model and activates its own adapter at each use (`None`: the
    base, every adapter disabled). One base in memory however many arms and folds ask: what a large model on an
    accelerator needs, where a merged full copy per adapter would not fit."""

    def __init__(self, base_model, dtype: torch.dtype, device: str):
        self.base = fresh_copy(base_model, dtype, device=device)
        self.peft = None

    def load(self, name: str, adapter_dir: Path) -> "AdapterView":
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=name)
        else:
            self.peft.load_adapter(str(adapter_dir), adapter_name=name)
        self.peft.eval()
        return AdapterView(self, name)

    def view(self, name: str | None) -> "AdapterView":
        return AdapterView(self, name)


class AdapterView:
    """A `SharedBase` with one adapter active (or none), where the arms want a model: `generate`, a forward call and
    `base_model` (the decoder, for hidden states) activate it first; everything else (config, device, dtype,
    generation_config) is the base's."""

    def __init__(self, shared: SharedBase, name: str | None):
        self._shared, self._name = shared, name

    def _active(self):
        """The underlying model with this view's adapter active: peft's LoRA layers read the active adapter at each
        forward pass, so the model peft injected them into is called directly."""
        peft = self._shared.peft
        if peft is None:
            return contextlib.nullcontext(self._shared.base)
        if self._name is None:
            return _disabled(peft)
        peft.set_adapter(self._name)
        return contextlib.nullcontext(peft.get_base_model())

    def __call__(self, *args, **kwargs):
        with self._active() as model:
            return model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self._active() as model:
            return model.generate(*args, **kwargs)

    @property
    def base_model(self):
        def decoder(*args, **kwargs):
            with self._active() as model:
                return model.base_model(*args, **kwargs)
        return decoder

    def __getattr__(self, name: str):
        return getattr(self._shared.base, name)


@contextlib.contextmanager
def _disabled(peft):
    with peft.disable_adapter():
        yield peft.get_base_model()


def arm_models(base_model, adapters: dict[str, Path | list[Path]], dtype: torch.dtype, device: str, how: str,
               base: bool = True) -> dict:
    """The models the arms generate with: "base" (when `base`) and, per entry of `adapters` (a name and its adapter
    folder, or a list of folders: one model per cross-fitted fold), the base with that adapter.

    `how` is models.adapters as resolved: "merged" builds a fresh copy per model with the adapter merged into its
    weights (on the CPU a peft-wrapped model generated 2-3x slower, see models.fresh_copy); "named" loads every
    adapter by name onto one `SharedBase`. Both give the same answers (tests/test_finetune.py)."""
    if how == "merged":
        models = {"base": fresh_copy(base_model, dtype, device=device)} if base else {}
        for name, dirs in adapters.items():
            models[name] = ([merged_model(base_model, d, dtype, device) for d in dirs] if isinstance(dirs, list)
                            else merged_model(base_model, dirs, dtype, device))
        return models
    shared = SharedBase(base_model, dtype, device)
    models = {"base": shared.view(None)} if base else {}
    for name, dirs in adapters.items():
        models[name] = ([shared.load(f"{name}-{i}", d) for i, d in enumerate(dirs)] if isinstance(dirs, list)
                        else shared.load(name, dirs))
    return models
