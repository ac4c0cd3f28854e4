"""How a conversation becomes a prompt for any model family, and where an answer ends.

    ragvsft run experiments/quick.yaml --set models.lm=path/to/model    # any local Hugging Face causal LM folder

Every arm builds chat messages (arms.build_messages); `render` turns them into the model's prompt in one of three
formats, chosen from the tokenizer by rendering a test conversation (`prompt_format`) and checked before any stage
runs (`template_problem`, called by models.lm_problems):

- **chat**: the model's own chat template (SmolLM2, Llama, Qwen, Phi).
- **chat, system folded**: a template without a system role (Gemma's raises "System role not supported", others
  drop the message silently) gets the system text as the first user turn's opening paragraph; an empty system
  message is left out.
- **plain**: a base model without a chat template (what Ovadia et al. 2024 fine-tuned) gets question/answer lines,
  the system text (if any) first, a worked example as an earlier question and answer:

      {system text}

      Question: {question}
      Answer: {answer}

      Question: {question}
      Answer:

An answer ends with the template's own end of turn (what it writes after an assistant message, e.g. SmolLM2's
`<|im_end|>`, Gemma's `<end_of_turn>`), or in the plain format the end-of-sequence token; generation stops there, at
the model's own end-of-sequence tokens (generation_config.json), and in the plain format at a new question line.
"""

from __future__ import annotations

CHAT, FOLDED, PLAIN = "chat", "chat, system folded", "plain"
QUESTION, ANSWER = "Question:", "Answer:"
_SYSTEM, _USER, _ANSWER = "<<ragvsft-system>>", "<<ragvsft-user>>", "<<ragvsft-answer>>"
# What a tokenizer keeps once found (each is rendered or tokenized from a test text: not once per prompt).
_FORMAT, _TURN, _BOS = "_ragvsft_prompt_format", "_ragvsft_end_of_turn", "_ragvsft_bos"


def _kept(tokenizer, name: str, find) -> str:
    """What `find(tokenizer)` returns, found once, then kept on the tokenizer."""
    found = getattr(tokenizer, name, None)
    if found is None:
        found = find(tokenizer)
        setattr(tokenizer, name, found)
    return found


def prompt_format(tokenizer) -> str:
    """CHAT, FOLDED or PLAIN for this tokenizer."""
    return _kept(tokenizer, _FORMAT, _find_format)


def _find_format(tokenizer) -> str:
    if not getattr(tokenizer, "chat_template", None):
        return PLAIN
    try:
        text = tokenizer.apply_chat_template([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}],
                                             tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja's TemplateError from raise_exception("System role not supported"), or any other
        return FOLDED
    return CHAT if _SYSTEM in text else FOLDED


def template_problem(tokenizer) -> str | None:
    """Why this tokenizer's prompts cannot be built (a test conversation rendered in its format), or None."""
    conversation = [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _USER}]
    try:
        prompt = render(tokenizer, conversation)
        answered = render(tokenizer, conversation + [{"role": "assistant", "content": _ANSWER}], generation=False)
    except Exception as exc:  # a template error of any kind: reported, not raised mid-run
        return f"its chat template fails on a test conversation ({type(exc).__name__}: {str(exc)[:120]})"
    if _USER not in prompt or _SYSTEM not in prompt:
        return "its chat template leaves out the user's message or the system text of a test conversation"
    if _ANSWER not in answered:
        return "its chat template leaves out the assistant's message of a test conversation"
    return None


def _folded(messages: list[dict]) -> list[dict]:
    """The system text moved into the first user turn, as its opening paragraph."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system" and m["content"])
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest:
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest


def _plain(messages: list[dict], generation: bool) -> str:
    parts = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    turn = None
    for m in messages:
        if m["role"] == "user":
            turn = f"{QUESTION} {m['content']}"
        elif m["role"] == "assistant":
            parts.append(f"{turn}\n{ANSWER} {m['content']}" if turn is not None else f"{ANSWER} {m['content']}")
            turn = None
    if turn is not None and generation:
        parts.append(f"{turn}\n{ANSWER}")
    return "\n\n".join(parts)


def _bos(tokenizer) -> str:
    """The start-of-sequence token where the tokenizer adds one by itself, else ""."""
    return _kept(tokenizer, _BOS, _find_bos)


def _find_bos(tokenizer) -> str:
    bos = getattr(tokenizer, "bos_token_id", None)
    added = tokenizer("x")["input_ids"] if bos is not None else []
    return tokenizer.bos_token if added and added[0] == bos else ""


def render(tokenizer, messages: list[dict], generation: bool = True) -> str:
    """The prompt text of `messages`, ending where the assistant's answer begins (`generation`), or with the last
    assistant message written out (generation=False)."""
    kind = prompt_format(tokenizer)
    if kind == PLAIN:  # with the start-of-sequence token the tokenizer would add (Gemma's <bos>; a template writes it)
        return _bos(tokenizer) + _plain(messages, generation)
    if kind == FOLDED:
        messages = _folded(messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def end_of_turn(tokenizer) -> str:
    """What ends an answer: the text the template writes after an assistant message (whitespace after it dropped),
    else the end-of-sequence token."""
    return _kept(tokenizer, _TURN, _find_end_of_turn)


def _find_end_of_turn(tokenizer) -> str:
    if prompt_format(tokenizer) != PLAIN:
        written = render(tokenizer, [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ANSWER}],
                         generation=False)
        after = written.split(_ANSWER, 1)[1].rstrip() if _ANSWER in written else ""
        if after:
            return after
    return tokenizer.eos_token or ""


def training_answer(tokenizer, answer: str) -> str:
    """The text a fine-tuned model learns to write after its prompt: the answer and its end of turn."""
    return (" " if prompt_format(tokenizer) == PLAIN else "") + answer + end_of_turn(tokenizer)


def _turn_ids(tokenizer) -> list[int]:
    turn = end_of_turn(tokenizer)
    return tokenizer(turn, add_special_tokens=False)["input_ids"] if turn else []


def stop_ids(model, tokenizer) -> list[int]:
    """Tokens that end generation: the model's own end-of-sequence tokens (generation_config.json: Gemma lists its
    end of turn there), the tokenizer's, and the end of turn when it is one token."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    turn = _turn_ids(tokenizer)
    if len(turn) == 1:
        ids.add(turn[0])
    return sorted(ids)


def stop_strings(tokenizer) -> list[str]:
    """Text that ends generation as well: the end of turn when it is several tokens (a template's marker the
    tokenizer does not hold as one), and in the plain format the start of a next question."""
    strings = [end_of_turn(tokenizer)] if len(_turn_ids(tokenizer)) > 1 else []
    return strings + ([f"\n{QUESTION}"] if prompt_format(tokenizer) == PLAIN else [])


def cut_answer(text: str, stops: list[str]) -> str:
    """A generated answer without what a stop string (`stop_strings`) began: an end-of-turn marker, the plain
    format's next question."""
    for stop in stops:
        text = text.split(stop, 1)[0]
    return text.strip()
