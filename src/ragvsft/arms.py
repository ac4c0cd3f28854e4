"""How each arm asks its question (one message builder per arm of `catalogue.CATALOGUE`), and batched greedy
generation through the model's prompt format (chat.py: its chat template, or plain question/answer lines).

The arms that use an adapter (lora, lora_rag, raft) and the fine-tuning sets use an empty system message: without
one, SmolLM2's chat template inserts its own ~20-token default system prompt into every training example and prompt
(a template without a system role, and the plain format, leave an empty one out).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (AttentionInterface, LogitsProcessor, LogitsProcessorList, StoppingCriteria,
                          StoppingCriteriaList)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from .catalogue import NAMES, RETRIEVING
from .chat import cut_answer, render, stop_ids as model_stop_ids, stop_strings
from .corpus import Corpus
from .score import matches_gold

RAG_ARMS = RETRIEVING
NO_SYSTEM = {"role": "system", "content": ""}


def context_block(chunks: list[str]) -> str:
    # Plain passages then the question: with SmolLM2-135M this layout beat numbered excerpts, the context in the
    # system message and an extra instruction line (23% against 10-17% held-out accuracy on 60 facts).
    return "\n\n".join(text.strip() for text in chunks) + "\n\nAnswer from the text above: "


def fewshot_pairs(corpus: Corpus, exclude_fact: str | None, k: int, seed: int,
                  gold: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, str]]:
    """k (train question, styled answer) pairs of other facts: the first k, in one seeded order of the corpus's facts,
    that are not the asked fact and whose statement does not name the asked question's gold answer (the prompt must
    not give the answer away). So nearly every question sees the same block, which `generate` then computes once as
    their shared prefix: on the quick profile per-question examples made few-shot the slowest arm but one."""
    order = sorted(corpus.facts, key=lambda f: zlib.crc32(f"{seed}:fewshot:{f.id}".encode()))
    shown = (f for f in order if f.id != exclude_fact and not (gold and matches_gold(f.statement, list(gold))))
    return [(f.train_questions[0], corpus.style.answer(f.statement)) for f in itertools.islice(shown, k)]


def reading_demos(corpus: Corpus, evidence: dict[str, str], exclude_fact: str | None, k: int, seed: int,
                  gold: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, str]]:
    """k worked examples of reading for the rag prompt, as (the fact's evidence unit and first train question laid
    out as the arm's own question is, the styled answer): the first k facts with an evidence unit, in one seeded order,
    that are not the asked fact and whose statement and unit do not name the asked question's gold answer. Train
    questions only, so no scored question is ever shown; one block for nearly every question (a shared prefix).
    Why: the 135M model, shown a unit that names the answer, often echoed the question or answered from its own
    memory; shown how a passage is read it named the answer more often (README, "Measured": --demos)."""
    order = sorted(corpus.facts, key=lambda f: zlib.crc32(f"{seed}:demos:{f.id}".encode()))
    shown = (f for f in order if f.id in evidence and f.id != exclude_fact
             and not (gold and matches_gold(f.statement + "\n" + evidence[f.id], list(gold))))
    return [(context_block([evidence[f.id]]) + f.train_questions[0], corpus.style.answer(f.statement))
            for f in itertools.islice(shown, k)]


def without_context(messages: list[dict], question: str, headings: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """The same conversation with the retrieved text's sentences taken out of its last turn: the question after the
    heading paths that led them (`headings`), after whatever came before (system prompt, worked examples). What
    context-aware decoding contrasts the answer with, so that it favours what the sentences add. Why the headings
    stay: contrasted with the question alone, a heading path was what the text added most, and the reader copied it
    ("Pay and Allowances > Payday" for "When are salaries paid?"); kept, the second corpus's train questions asked
    back were answered right 35 times of 40 against 26, the quick profile's development questions 49 of 80 as before."""
    last = context_block(list(headings)) + question if headings else question
    return [*messages[:-1], {"role": "user", "content": last}]


def closed_book_messages(question: str) -> list[dict]:
    """What the LoRA model is trained on and asked: the question alone, under an empty system message."""
    return [NO_SYSTEM, {"role": "user", "content": question}]


def reader_messages(question: str, chunks: list[str]) -> list[dict]:
    """Retrieved chunks then the question, under an empty system message: what the RAFT reader is trained on and
    asked, and what the closed-book LoRA model is asked in the LoRA + RAG arm."""
    return closed_book_messages(context_block(chunks) + question)


def _system(corpus: Corpus) -> dict:
    return {"role": "system", "content": corpus.style.system_prompt}


def _shots(examples: list[tuple[str, str]] | None) -> list[dict]:
    return [m for q, a in examples or [] for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def _fewshot(question, corpus, chunks, examples):
    return [_system(corpus), *_shots(examples), {"role": "user", "content": question}]


BUILDERS = {
    "base": lambda question, corpus, chunks, examples: [{"role": "user", "content": question}],
    "prompt": lambda question, corpus, chunks, examples: [_system(corpus), {"role": "user", "content": question}],
    "fewshot": _fewshot,
    "rag": lambda question, corpus, chunks, examples: [  # examples: reading_demos
        _system(corpus), *_shots(examples), {"role": "user", "content": context_block(chunks or []) + question}],
    "lora": lambda question, corpus, chunks, examples: closed_book_messages(question),
    "lora_rag": lambda question, corpus, chunks, examples: reader_messages(question, chunks or []),
    "raft": lambda question, corpus, chunks, examples: reader_messages(question, chunks or []),
}
assert set(BUILDERS) == set(NAMES), "every arm of the catalogue needs a message builder"


def build_messages(arm: str, question: str, corpus: Corpus, chunks: list[str] | None = None,
                   examples: list[tuple[str, str]] | None = None) -> list[dict]:
    """Chat messages for one arm and question."""
    if arm not in BUILDERS:
        raise ValueError(f"unknown arm {arm!r}")
    return BUILDERS[arm](question, corpus, chunks, examples)


@dataclass
class Generation:
    answer: str
    prompt_tokens: int
    generated_tokens: int
    seconds: float
    # The answer's mean log-probability per token as greedy decoding scored it (the chosen token is the most likely
    # one; under context-aware decoding, of its combined scores): the confidence that risk-coverage ranks answers by
    # (score.risk_coverage). None for an empty answer.
    logprob: float | None = None
    # Prompt tokens taken from the shared prefix's cache instead of computed (generate's `reuse_prefix`): the prefix
    # is computed once per call, counted for the call's first prompt, so over a call these add up to the tokens not
    # computed.
    reused_tokens: int = 0
    # Tokens computed for the contrast beside this prompt (generate's `contrast`): its own prompt tokens past the
    # shared prefix and the answer's tokens once more, context-aware decoding's extra work; 0 without it.
    contrast_tokens: int = 0


def prompt_ids(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int) -> list[list[int]]:
    """Token ids of each conversation's prompt in the model's format (chat.render), ending where the answer begins."""
    prompts = [render(tokenizer, c) for c in conversations]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    budget = getattr(model.config, "max_position_embeddings", None)
    budget = budget - max_new_tokens if budget else None
    if budget is not None and any(len(x) > budget for x in ids):
        # The end holds the question and the assistant's turn; a cut passage beats an error or a silent overflow.
        cut = sum(len(x) > budget for x in ids)
        warnings.warn(f"{cut} prompt(s) longer than the model's context ({budget} tokens + {max_new_tokens} for the "
                      f"answer) were cut to their last {budget} tokens", stacklevel=2)
        ids = [x[-max(1, budget):] for x in ids]
    return ids


Progress = Callable[[int, int], None]  # called after each batch with (done, total)


def progress_line(log: Callable[[str], None], what: str) -> Progress:
    """A progress callback for `generate` and `prompt_states`: logs "what: done/total in s, about s left" after each
    batch, so a long stretch of generation is never silent."""
    began = time.perf_counter()

    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - began
        left = f", about {elapsed / done * (total - done):.0f} s left" if 0 < done < total else ""
        log(f"{what}: {done}/{total} in {elapsed:.0f} s{left}")

    return report


def prompt_states(model, tokenizer, conversations: list[list[dict]], layers: list[int], batch_size: int,
                  progress: Progress | None = None) -> np.ndarray:
    """Hidden states at each prompt's last token (where the answer's first token is chosen), from `layers`
    (0 = embeddings), concatenated: one float32 row per conversation. The input of the reader's answerability head."""
    ids = prompt_ids(model, tokenizer, conversations, 0)
    rows = np.zeros((len(ids), model.config.hidden_size * len(layers)), dtype="float32")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        # left padding; the inputs go where the model is (models.device)
        encoded = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt").to(model.device)
        with torch.inference_mode():  # the transformer without its vocabulary projection: no logits are needed
            hidden = model.base_model(**encoded, output_hidden_states=True).hidden_states
        rows[batch] = torch.cat([hidden[layer][:, -1, :].float() for layer in layers], dim=1).cpu().numpy()
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return rows


# the longest a batch of generation goes without a progress line: a beat falls between decoding steps, so the gap
# seen is this plus up to a step (10 s left 12-18 s gaps on a 2-core AVX512-BF16 EPYC, against a bar of 15)
HEARTBEAT_SECONDS = 6.0


class _Heartbeat(StoppingCriteria):
    """A stopping criterion that never stops: between decoding steps it calls `beat` at most every
    HEARTBEAT_SECONDS, so one long batch is not a silent stretch. Greedy decoding is untouched."""

    def __init__(self, beat: Callable[[], None]):
        self.beat, self.last = beat, time.perf_counter()

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        if time.perf_counter() - self.last >= HEARTBEAT_SECONDS:
            self.last = time.perf_counter()
            self.beat()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _StepLogprob(LogitsProcessor):
    """Records, at every decoding step, the log-probability of the token greedy decoding picks (the largest); the
    scores pass through unchanged, so the answers are the same."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values)
        return scores

    def mean_over(self, row: int, tokens: int) -> float | None:
        """The mean over the first `tokens` steps of one row (the answer's own tokens, not the padding after it)."""
        if tokens == 0 or not self.steps:
            return None
        return round(float(torch.stack([step[row] for step in self.steps[:tokens]]).mean()), 4)


class _ContextAware(LogitsProcessor):
    """Context-aware decoding (Shi et al. 2024): the batch's first `n` rows are the prompts with their retrieved text,
    the last `n` the same prompts without it; each pair's next token is chosen by (1 + weight) * log p(y | text,
    question) - weight * log p(y | question), so what the model would say anyway counts less than what the text
    adds. With `plausibility` (alpha) above 0, only tokens with p(y | text, question) >= alpha * the likeliest one's
    may be chosen (the adaptive plausibility constraint of contrastive decoding, Li et al. 2023): the contrast then
    re-ranks what the reader finds plausible, never lifts a token it finds unlikely merely because the question alone
    finds it less likely still. Both rows of a pair get the combined scores, so greedy decoding gives them the same
    token."""

    def __init__(self, n: int, weight: float, plausibility: float = 0.0):
        self.n, self.weight, self.plausibility = n, weight, plausibility

    def __call__(self, input_ids, scores):
        scores = torch.log_softmax(scores.float(), dim=-1)
        with_text, without = scores[:self.n], scores[self.n:]
        combined = (1 + self.weight) * with_text - self.weight * without
        combined = torch.where(torch.isinf(with_text), with_text, combined)  # a token ruled out stays out (not nan)
        if self.plausibility > 0:
            floor = with_text.max(dim=-1, keepdim=True).values + math.log(self.plausibility)
            combined = combined.masked_fill(with_text < floor, -math.inf)
        return torch.cat([combined, combined])


PREFIX_MIN_TOKENS = 16  # a shorter shared prefix saves less than it costs to compute

SHARED_PREFIX_ATTENTION = "ragvsft_shared_prefix"
# The shared prefix's keys and values, one (key, value) per layer, while a batch generates after it (_prefix_of).
_prefix: contextvars.ContextVar = contextvars.ContextVar("shared prefix", default=None)


def _shared_prefix_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention over [the shared prefix][each row's own tokens], with the prefix's keys and values held once for the
    whole batch rather than in every row's cache. Why: copied into each row, the prefix (the rag arm's worked
    examples, ~370 tokens) made copying and reading the cache, not the model's weights, most of each decoding step.
    A batch's first pass (many query tokens) runs transformers' own sdpa attention on the prefix joined to the rows
    once; each decoding step (one query token) meets the prefix in one matrix product per key/value head for all rows
    at once, then one float32 softmax over both parts (the arithmetic of transformers' eager attention)."""
    prefix_key, prefix_value = _prefix.get()[module.layer_idx]  # (1, kv heads, prefix, dim)
    rows, heads, length, dim = query.shape
    kv_heads, shared, own = key.shape[1], prefix_key.shape[2], key.shape[2]
    # the own tokens' additive mask (rows, 1, length, own), eager_mask's: padding and causality, never None
    if length > 1:
        join = lambda prefix, mine: torch.cat([prefix.expand(rows, -1, -1, -1), mine], dim=2)  # noqa: E731
        mask = torch.cat([attention_mask.new_zeros(rows, 1, length, shared), attention_mask], dim=-1)
        return sdpa_attention_forward(module, query, join(prefix_key, key), join(prefix_value, value), mask,
                                      dropout=dropout, scaling=scaling)
    group = heads // kv_heads
    flat = query.reshape(rows, kv_heads, group, dim).transpose(0, 1).reshape(kv_heads, rows * group, dim)
    to_prefix = torch.matmul(flat, prefix_key[0].transpose(1, 2))  # (kv heads, rows * group, prefix)
    to_own = torch.matmul(query.reshape(rows, kv_heads, group, dim), key.transpose(2, 3))  # (rows, kv, group, own)
    to_own = to_own + attention_mask.reshape(rows, 1, 1, own)
    scores = torch.cat([to_prefix.reshape(kv_heads, rows, group, shared).transpose(0, 1), to_own], dim=-1) * scaling
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    on_prefix, on_own = weights.split([shared, own], dim=-1)
    from_prefix = torch.matmul(on_prefix.transpose(0, 1).reshape(kv_heads, rows * group, shared), prefix_value[0])
    out = from_prefix.reshape(kv_heads, rows, group, dim).transpose(0, 1) + torch.matmul(on_own, value)
    return out.reshape(rows, 1, heads, dim), None


AttentionInterface.register(SHARED_PREFIX_ATTENTION, _shared_prefix_attention)
AttentionMaskInterface.register(SHARED_PREFIX_ATTENTION, eager_mask)  # additive float masks of the own tokens


@contextlib.contextmanager
def _prefix_of(model, layers: list):
    """The model attends through `_shared_prefix_attention` to `layers` (the prefix's keys and values) meanwhile."""
    config = model.config
    was, token = config._attn_implementation, _prefix.set(layers)
    config._attn_implementation = SHARED_PREFIX_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = was
        _prefix.reset(token)


def _prefilled(model, encoded: dict, n: int, shared: int):
    """The cache of a context-aware batch (its `n` prompts, then their contrasts) after all but each row's last token,
    computed in two passes, the prompts' and the contrasts', each only as wide as its own longest row, then left
    padded to the batch's width. Why: a contrast is the question alone, about a quarter of its prompt's own tokens,
    yet padded into one pass with the prompts it cost as much; on the quick profile's rag prompts the first pass took
    19.3 s for 82 pairs against 8.4 s for the prompts alone. None where a part has no token before its last one."""
    from transformers import DynamicCache

    mask = encoded["attention_mask"]
    width = mask.shape[1]
    positions = encoded.get("position_ids", (mask.cumsum(-1) - 1).clamp(min=0) + shared)
    parts = []
    for rows in (slice(0, n), slice(n, None)):
        start = width - int(mask[rows].sum(-1).max())  # the part's longest row begins here
        if width - start < 2:
            return None
        parts.append((start, model(input_ids=encoded["input_ids"][rows, start:-1], use_cache=True, logits_to_keep=1,
                                   attention_mask=mask[rows, start:-1], position_ids=positions[rows, start:-1],
                                   past_key_values=DynamicCache(config=model.config)).past_key_values))
    cache = DynamicCache(config=model.config)
    pad = lambda x, start: torch.nn.functional.pad(x, (0, 0, start, 0))  # noqa: E731  (left, along the tokens)
    for layer in range(len(parts[0][1].layers)):
        cache.update(torch.cat([pad(part.layers[layer].keys, start) for start, part in parts]),
                     torch.cat([pad(part.layers[layer].values, start) for start, part in parts]), layer)
    return cache


def shared_prefix(ids: list[list[int]]) -> int:
    """How many leading tokens all prompts share (the system prompt and the template's opening), leaving each prompt
    at least one token of its own to start generation from."""
    if len(ids) < 2:
        return 0
    first, length = ids[0], min(len(x) for x in ids) - 1
    for other in ids[1:]:
        length = next((n for n in range(length) if other[n] != first[n]), length)
    return length


def _prefix_shareable(model, longest: int) -> bool:
    """Whether `_shared_prefix_attention` computes what the model's own attention would for sequences up to `longest`
    tokens: plain causal attention (no configured cache, which generate builds itself; no soft-capped scores; no
    sliding window shorter than the sequence)."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    return (getattr(getattr(model, "generation_config", None), "cache_implementation", None) is None
            and getattr(config, "attn_logit_softcapping", None) is None and (not window or window >= longest)
            and config._attn_implementation in ("sdpa", "eager"))


def batches(lengths: list[int], batch_size: int, batch_tokens: int | None = None) -> list[list[int]]:
    """Prompt indices in batches: prompts of similar length together (little compute goes to padding), as few batches
    as hold at most `batch_size` prompts and about `batch_tokens` padded prompt tokens each, evened out (98 prompts
    at 48: 33+33+32, not 48+48+2: a nearly empty last batch costs a full decoding loop)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    count, filled = 0, 0
    for i in order:  # ascending: the prompt added is the batch's longest
        if filled and (filled == batch_size or (batch_tokens and (filled + 1) * lengths[i] > batch_tokens)):
            count, filled = count + 1, 0
        filled += 1
    count += 1 if filled else 0
    sizes = [len(order) // count + (n < len(order) % count) for n in range(count)]
    return [order[sum(sizes[:n]):sum(sizes[:n + 1])] for n in range(count)]


def generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
             progress: Progress | None = None, reuse_prefix: bool = True,
             batch_tokens: int | None = None, contrast: list[list[dict]] | None = None,
             contrast_weight: float = 0.0, plausibility: float = 0.0) -> list[Generation]:
    """Greedy answers for many conversations, batched with left padding (`batches`: at most `batch_size` prompts and
    about `batch_tokens` prompt tokens each). `progress` is called after each batch and, during a long one, every
    HEARTBEAT_SECONDS. Seconds are the batch's wall time shared equally by its queries.
    With `reuse_prefix`, the tokens every prompt begins with (an arm's system prompt, its worked examples) are
    computed once and their keys and values held once for every batch (`_shared_prefix_attention`): a batch holds
    each prompt's own tokens, left padded, their positions counted on from the prefix, so every prompt is computed as
    without the reuse; the batch limits count those own tokens.
    A prompt longer than the model's context (less the answer's tokens) keeps its end, with a warning.
    With `contrast` (conversation i without its retrieved text, `without_context`) and a `contrast_weight` above 0,
    decoding is context-aware (`_ContextAware`, with its `plausibility` constraint): each batch holds its prompts and
    then their contrasts, both within the batch limits, and an answer's `contrast_tokens` count what its contrast
    computed."""
    ids = prompt_ids(model, tokenizer, conversations, max_new_tokens)
    contrasted = bool(contrast) and contrast_weight > 0
    others = prompt_ids(model, tokenizer, contrast, max_new_tokens) if contrasted else []
    lengths = [len(x) for x in ids]
    widths = [max(len(x), len(y)) for x, y in zip(ids, others)] if contrasted else lengths  # a pair's padded length
    results: list[Generation | None] = [None] * len(ids)
    # The model's own end-of-sequence and end-of-turn tokens (chat.stop_ids); padding is never part of an answer.
    stop_ids = model_stop_ids(model, tokenizer)
    dropped = set(stop_ids) | ({tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else set())
    stops = stop_strings(tokenizer)
    strings = {"stop_strings": stops, "tokenizer": tokenizer} if stops else {}
    longest = max(lengths + [len(x) for x in others], default=0) + max_new_tokens
    shared = shared_prefix(ids + others) if reuse_prefix and _prefix_shareable(model, longest) else 0
    shared = shared if shared >= PREFIX_MIN_TOKENS else 0
    # a contrast's own pass needs the cache generate would build (plain causal attention, _prefix_shareable)
    separate_prefill = contrasted and _prefix_shareable(model, longest)
    began = time.perf_counter()  # the first batch's clock includes computing the shared prefix: its queries' seconds
    layers: list = []
    if shared:
        with torch.inference_mode():
            cache = model(input_ids=torch.tensor([ids[0][:shared]], device=model.device), use_cache=True,
                          logits_to_keep=1).past_key_values
        layers = [(layer.keys, layer.values) for layer in cache.layers]
    done = 0
    # a contrasted prompt and its contrast are two rows of one batch: the limits count pairs, and only the tokens
    # each row computes and holds (the shared prefix is held once)
    pairs = 2 if contrasted else 1
    for batch in batches([w - shared for w in widths], max(1, batch_size // pairs),
                         batch_tokens and max(1, batch_tokens // pairs)):
        rows = [ids[i][shared:] for i in batch] + [others[i][shared:] for i in batch if contrasted]
        encoded = dict(tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(model.device))
        if shared:  # each row's own tokens are counted on from the prefix, padding left out
            encoded["position_ids"] = (encoded["attention_mask"].cumsum(-1) - 1).clamp(min=0) + shared
        # Within a batch, the progress line repeats the batches done so far (the elapsed time moves on).
        beats = StoppingCriteriaList([_Heartbeat(lambda before=done: progress(before, len(ids)))] if progress else [])
        scored = _StepLogprob()
        processors = ([_ContextAware(len(batch), contrast_weight, plausibility)] if contrasted else []) + [scored]
        with torch.inference_mode(), (_prefix_of(model, layers) if shared else contextlib.nullcontext()):
            cache = _prefilled(model, encoded, len(batch), shared) if separate_prefill else None
            if cache is not None:
                encoded["past_key_values"] = cache
            output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id, stopping_criteria=beats,
                                    logits_processor=LogitsProcessorList(processors),
                                    **strings)
        seconds = (time.perf_counter() - began) / len(batch)
        new_tokens = output[:len(batch), encoded["input_ids"].shape[1]:]  # a contrast's tokens are its pair's
        for r, (row, i) in enumerate(zip(new_tokens, batch)):
            tokens = row.tolist()
            produced = [t for t in tokens if t not in dropped]
            # the answer's steps: up to its first stop or padding token (a row that ended waits in padding)
            answer_steps = next((n for n, t in enumerate(tokens) if t in dropped), len(tokens))
            results[i] = Generation(cut_answer(tokenizer.decode(produced, skip_special_tokens=True), stops),
                                    lengths[i], len(produced), seconds, scored.mean_over(r, answer_steps),
                                    shared if shared and i else 0,
                                    len(others[i]) - shared + len(produced)
                                    if contrasted else 0)
        done += len(batch)
        if progress:
            progress(done, len(ids))
        began = time.perf_counter()
    return results  # type: ignore[return-value]


