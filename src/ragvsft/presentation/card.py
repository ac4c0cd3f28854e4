"""The closed-book adapter's model card (adapter/README.md): its base model by name and hash, what it was trained
on, its settings, this run's figures, and how to load it elsewhere. Written with the reports, from results.json."""

from __future__ import annotations

from ..catalogue import label
from ..models import lm_name
from .report import pct, pct_ci

LOAD = '''```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("path/to/{name}")  # the base model named above, wherever it is
model = PeftModel.from_pretrained(base, "path/to/this/adapter")
# or in one line, which loads the base named in adapter_config.json ("{name}": from the Hugging Face Hub, or a
# folder of that name where you run it) and the tokenizer saved beside the adapter:
# model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/adapter")
```'''


def adapter_card(results: dict) -> str:
    """adapter/README.md for the run's closed-book adapter (Hugging Face model-card front matter first)."""
    run, cfg, training = results["run"], results["config"]["finetune"], results.get("training") or {}
    name, corpus = lm_name(run["lm"]), results["corpus"]
    lines = ["---", f"base_model: {name}", "library_name: peft", "tags: [lora, ragvsft, closed-book]", "---", "",
             f"# Closed-book LoRA adapter of the ragvsft run `{run['name']}`", "",
             f"- **Base model**: `{name}` (ragvsft `models.lm: {run['lm']}`"
             + (f"; SHA-256 of the files that change its answers `{run['lm_sha256']}`" if run.get("lm_sha256") else "")
             + ").",
             f"- **Trained on**: {training.get('examples', '?')} examples (`finetune_set.jsonl` in the run folder; "
             "`finetune_set.trl.jsonl` in the prompt-completion format TRL's SFTTrainer reads): train questions of "
             f"{corpus['facts']} facts of the corpus `{corpus['name']}` (SHA-256 `{corpus['sha256']}`), each answered "
             "in the house style, under an empty system message.",
             f"- **Settings**: LoRA r {cfg['lora_r']}, alpha {cfg['lora_alpha']:g}, dropout {cfg['lora_dropout']:g} on "
             f"{', '.join(cfg['target_modules'])} from layer {cfg['first_lora_layer']}; learning rate "
             f"{cfg['learning_rate']:g}, batch size {cfg['batch_size']}, {training.get('epochs', cfg['epochs'])} epochs "
             f"(stopped: {training.get('stopped', '?')}), frozen base in {cfg['precision']}, seed {run['seed']}."]
    lora = results["arms"].get("lora") or {}
    if lora:
        figures = [f"{what} {pct_ci(lora.get(s))}" for s, what in (("seen", "seen (trained) questions"),
                                                                   ("heldout", "the same facts asked in new words"))
                   if lora.get(s)]
        lines.append(f"- **This run's figures** ({label('lora')}, report.md): correct on " + ", on ".join(figures)
                     + f"; house style {pct(lora.get('style_adherence'))}"
                     + (f"; it reproduced {pct(training['learnt_share'])} of its training answers token for token in "
                        "its last epoch" if training.get("learnt_share") is not None else "") + ".")
    lines += ["", "## Load it elsewhere", "", LOAD.format(name=name), ""]
    return "\n".join(lines)
