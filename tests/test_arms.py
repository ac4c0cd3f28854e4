"""Arms: what each arm shows the model, and batched generation that matches one-at-a-time generation."""

import math

import pytest
import torch

from ragvsft.arms import (PREFIX_MIN_TOKENS, batches, build_messages, fewshot_pairs, generate, prompt_ids, reading_demos,
                          shared_prefix, without_context)
from ragvsft.corpus import load_corpus
from ragvsft.models import load_lm


def test_messages_per_arm(toy_corpus):
    corpus = load_corpus(toy_corpus)
    q, system = "Who leads security?", corpus.style.system_prompt
    assert build_messages("base", q, corpus) == [{"role": "user", "content": q}]
    assert build_messages("lora", q, corpus) == [{"role": "system", "content": ""}, {"role": "user", "content": q}]
    assert build_messages("prompt", q, corpus)[0] == {"role": "system", "content": system}
    rag = build_messages("rag", q, corpus, chunks=["Dalia Fenwick is the head of security."])
    assert rag[0]["content"] == system and "Dalia Fenwick" in rag[1]["content"] and rag[1]["content"].endswith(q)
    lora_rag = build_messages("lora_rag", q, corpus, chunks=["Dalia Fenwick is the head of security."])
    assert lora_rag[0] == {"role": "system", "content": ""} and "Dalia Fenwick" in lora_rag[1]["content"]
    shots = fewshot_pairs(corpus, "security", 2, seed=1)
    fewshot = build_messages("fewshot", q, corpus, examples=shots)
    assert [m["role"] for m in fewshot] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert fewshot[2]["content"].startswith("Hi there!")


def test_fewshot_never_shows_the_asked_fact_and_most_questions_share_one_block(toy_corpus):
    corpus = load_corpus(toy_corpus)
    blocks = {f.id: fewshot_pairs(corpus, f.id, 2, seed=0) for f in corpus.facts}
    for fact in corpus.facts:
        assert len(blocks[fact.id]) == 2 and (fact.train_questions[0], corpus.style.answer(fact.statement)) \
            not in blocks[fact.id]
    # the facts outside the first block all see it: one prefix for the probe to compute once
    common = max(map(tuple, blocks.values()), key=list(map(tuple, blocks.values())).count)
    assert sum(tuple(b) == common for b in blocks.values()) == len(corpus.facts) - 2
    assert fewshot_pairs(corpus, "meal", 3, seed=0) == fewshot_pairs(corpus, "meal", 3, seed=0)
    assert any(fewshot_pairs(corpus, None, 2, seed=s) != fewshot_pairs(corpus, None, 2, seed=0) for s in range(1, 5))


def test_batched_generation_equals_single(tiny_lm, toy_corpus):
    model, tokenizer = load_lm(str(tiny_lm))
    corpus = load_corpus(toy_corpus)
    conversations = [build_messages("prompt", q, corpus) for q in ["Hi", "What is the payload of the Widget W9 today?", "Who?"]]
    batched = generate(model, tokenizer, conversations, max_new_tokens=5, batch_size=3)
    single = [generate(model, tokenizer, [c], max_new_tokens=5, batch_size=1)[0] for c in conversations]
    assert [g.answer for g in batched] == [g.answer for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert all(0 <= g.generated_tokens <= 5 and g.seconds > 0 for g in batched)
    assert batched[1].prompt_tokens > batched[0].prompt_tokens


def test_a_shared_prompt_prefix_computed_once_gives_the_same_answers(tiny_lm, toy_corpus):
    """The system prompt's cache, computed once and copied into each batch, gives the tokens and scores of
    generating every prompt whole; uneven batches put padding between the prefix and each prompt's own tokens."""
    model, tokenizer = load_lm(str(tiny_lm))
    torch.manual_seed(0)
    for weight in model.parameters():  # larger weights than the initialiser's: answers that depend on every input token
        weight.data.normal_(0, 0.5)
    corpus = load_corpus(toy_corpus)
    questions = ["Hi", "What is the payload of the Widget W9 today?", "Who?", "Where is the Gizmo G2 made, and when?",
                 "Why?"]
    conversations = [build_messages("prompt", q, corpus) for q in questions]
    assert shared_prefix(prompt_ids(model, tokenizer, conversations, 8)) >= PREFIX_MIN_TOKENS  # the reuse is taken
    reused = generate(model, tokenizer, conversations, max_new_tokens=8, batch_size=3)
    whole = generate(model, tokenizer, conversations, max_new_tokens=8, batch_size=3, reuse_prefix=False)
    assert [(g.answer, g.prompt_tokens, g.generated_tokens) for g in reused] == \
        [(g.answer, g.prompt_tokens, g.generated_tokens) for g in whole]
    assert [g.logprob for g in reused] == pytest.approx([g.logprob for g in whole], abs=1e-3)
    assert len({g.answer for g in whole}) == len(questions)  # every answer depends on its own tokens
    shared = shared_prefix(prompt_ids(model, tokenizer, conversations, 8))
    assert [g.reused_tokens for g in reused] == [0] + [shared] * (len(questions) - 1)
    assert all(g.reused_tokens == 0 for g in whole)


def test_the_shared_prefix_is_held_once_so_the_batch_limits_count_each_prompts_own_tokens(tiny_lm, toy_corpus):
    """With the prefix computed once, `batch_tokens` counts the tokens each prompt adds, not the prefix every prompt
    would otherwise carry; a model whose attention the shared-prefix path cannot reproduce (a sliding window shorter
    than the prompts) generates every prompt whole, with the same answers."""
    model, tokenizer = load_lm(str(tiny_lm))
    corpus = load_corpus(toy_corpus)
    conversations = [build_messages("prompt", f.train_questions[0], corpus) for f in corpus.facts]
    ids = prompt_ids(model, tokenizer, conversations, 5)
    shared = shared_prefix(ids)
    assert shared >= PREFIX_MIN_TOKENS
    own = max(len(x) for x in ids) - shared
    limit = 2 * own  # two prompts' own tokens, less than one whole prompt
    assert limit < min(len(x) for x in ids)
    batches_seen: list = []
    reused = generate(model, tokenizer, conversations, 5, 8, lambda d, t: batches_seen.append(d), batch_tokens=limit)
    assert len(batches_seen) == -(-len(ids) // 2)  # two prompts a batch
    assert sum(g.reused_tokens for g in reused) == shared * (len(ids) - 1)
    model.config.sliding_window = shared  # shorter than any prompt
    whole = generate(model, tokenizer, conversations, 5, 8, batch_tokens=limit)
    assert all(g.reused_tokens == 0 for g in whole)
    assert [g.answer for g in whole] == [g.answer for g in reused]


def test_batches_hold_similar_lengths_within_both_limits_evened_out():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10]
    by_count = batches(lengths, batch_size=4)
    assert [len(b) for b in by_count] == [4, 3, 3]
    assert sorted(i for b in by_count for i in b) == list(range(10))
    assert [lengths[i] for b in by_count for i in b] == sorted(lengths)  # similar lengths batched together
    # 20 tokens hold lengths 1-4, 5-6, 7-8, 9-10 (a batch is as long as its longest prompt): 4 batches, evened out
    assert [[lengths[i] for i in b] for b in batches(lengths, batch_size=10, batch_tokens=20)] == \
        [[1, 2, 3], [4, 5, 6], [7, 8], [9, 10]]
    assert len(batches(lengths, batch_size=10, batch_tokens=30)) == 3  # 1-5, 6-8, 9-10
    assert batches(lengths, batch_size=10) == [sorted(range(10), key=lambda i: lengths[i])]
    assert [len(b) for b in batches([3] * 98, batch_size=48)] == [33, 33, 32]
    assert batches([], batch_size=4) == []


def test_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 6]]) == 3
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix([[7, 1], [8, 1]]) == 0
    assert shared_prefix([[1, 2, 3]]) == 0


def test_fewshot_examples_never_name_the_asked_answer_on_the_shipped_corpus():
    """Over every question of the full probe: no example's statement contains the gold answer of the question."""
    from conftest import REPO
    from ragvsft.config import load_config
    from ragvsft.probe import question_sets
    from ragvsft.score import matches_gold

    corpus = load_corpus(REPO / "corpus")
    cfg = load_config(REPO / "experiments" / "full.yaml")
    questions = question_sets(corpus, cfg.probe)
    facts = {f.id: f for f in corpus.facts}
    assert len(questions) > 600
    for q in questions:
        if q.gold is None:
            continue
        pairs = fewshot_pairs(corpus, q.fact_id, cfg.probe.fewshot_k, cfg.seed, q.gold)
        assert len(pairs) == cfg.probe.fewshot_k
        for example_question, answer in pairs:
            assert not matches_gold(answer, list(q.gold)), (q.qid, answer)
            assert example_question not in facts[q.fact_id].train_questions


def test_reading_demos_show_other_facts_evidence_and_train_questions_only_on_the_shipped_corpus(mock_encoder):
    """Over every question of the full probe and every unanswerable one: the rag arm's worked examples are k other
    facts, each its evidence unit (which names that fact's answer) with its first train question and styled answer;
    none names the asked gold answer, and no probe or unanswerable question of the corpus is ever in them."""
    from conftest import REPO
    from ragvsft.config import load_config
    from ragvsft.index import chunk_corpus, evidence_units
    from ragvsft.probe import question_sets
    from ragvsft.score import matches_gold

    corpus = load_corpus(REPO / "corpus")
    cfg = load_config(REPO / "experiments" / "full.yaml")
    chunks = chunk_corpus(corpus, mock_encoder, cfg.index.chunk_tokens, cfg.index.chunk_overlap, cfg.index.chunking)
    evidence = evidence_units(corpus.facts, chunks, corpus.documents, cfg.index.headed)
    facts = {f.id: f for f in corpus.facts}
    assert len(evidence) > 0.9 * len(facts)
    assert all(matches_gold(unit, list(facts[fid].gold)) for fid, unit in evidence.items())
    never = {q for f in corpus.facts for q in f.probe_questions} | {u.question for u in corpus.unanswerable}
    by_answer = {corpus.style.answer(f.statement): f for f in corpus.facts}
    questions = question_sets(corpus, cfg.probe.model_copy(update={"sets": ["heldout", "seen", "unanswerable"]}))
    assert len(questions) > 600 and cfg.probe.rag_demos > 0
    for q in questions:
        demos = reading_demos(corpus, evidence, q.fact_id, cfg.probe.rag_demos, cfg.seed, q.gold)
        assert len(demos) == cfg.probe.rag_demos
        for text, answer in demos:
            shown = by_answer[answer]
            assert shown.id != q.fact_id and text.endswith(shown.train_questions[0])
            assert evidence[shown.id] in text and not any(n in text for n in never), (q.qid, text)
            assert not (q.gold and matches_gold(text + answer, list(q.gold))), (q.qid, text)


def test_the_rag_prompt_puts_its_demos_between_the_system_prompt_and_the_question(toy_corpus, mock_encoder):
    from ragvsft.index import chunk_corpus, evidence_units

    corpus = load_corpus(toy_corpus)
    evidence = evidence_units(corpus.facts, chunk_corpus(corpus, mock_encoder, 96, 24), corpus.documents, True)
    demos = reading_demos(corpus, evidence, "security", 2, seed=0)
    assert len(demos) == 2 and reading_demos(corpus, evidence, "security", 2, seed=0) == demos
    messages = build_messages("rag", "Who leads security?", corpus, ["Dalia Fenwick is the head of security."], demos)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[2]["content"] == demos[0][1] and messages[-1]["content"].endswith("Who leads security?")
    assert reading_demos(corpus, evidence, "security", 0, seed=0) == []


def test_fewshot_skips_other_facts_that_give_the_answer_away(toy_corpus):
    corpus = load_corpus(toy_corpus)
    # "portal"'s reverse gold is "hotels": the "portal" fact itself is excluded by id, and no other statement says
    # "hotels"; asked about "meal" with gold "Roamly", the portal fact must not be shown.
    for seed in range(8):
        pairs = fewshot_pairs(corpus, "meal", 3, seed=seed, gold=("Roamly",))
        assert len(pairs) == 2 and all("Roamly" not in answer for _, answer in pairs)


def test_a_prompt_longer_than_the_context_is_cut_with_a_warning(tiny_lm):
    model, tokenizer = load_lm(str(tiny_lm), "float32")
    model.config.max_position_embeddings = 64
    long = [{"role": "user", "content": "word " * 500 + "Who leads security?"}]
    with pytest.warns(UserWarning, match="1 prompt\\(s\\) longer than the model's context \\(59 tokens"):
        [cut, short] = generate(model, tokenizer, [long, [{"role": "user", "content": "Hi?"}]], max_new_tokens=5,
                                batch_size=2)
    assert cut.prompt_tokens == 59 and short.prompt_tokens < 59 and cut.generated_tokens <= 5


def test_progress_reports_every_batch_and_changes_no_answer(tiny_lm, toy_corpus):
    from ragvsft.arms import progress_line, prompt_states

    model, tokenizer = load_lm(str(tiny_lm))
    corpus = load_corpus(toy_corpus)
    conversations = [build_messages("prompt", f.train_questions[0], corpus) for f in corpus.facts] * 2
    silent = generate(model, tokenizer, conversations, 5, 3)
    lines: list[str] = []
    reported = generate(model, tokenizer, conversations, 5, 3, progress_line(lines.append, "arm prompt"))
    assert [g.answer for g in reported] == [g.answer for g in silent]
    assert len(lines) == 3 and lines[-1].startswith("arm prompt: 8/8 in") and "about" in lines[0]
    states = prompt_states(model, tokenizer, conversations, [1, 2], 3)
    counts = []
    assert (prompt_states(model, tokenizer, conversations, [1, 2], 3, lambda d, t: counts.append((d, t))) == states).all()
    assert counts == [(3, 8), (6, 8), (8, 8)]


def test_a_long_batch_beats_between_decoding_steps_and_changes_no_answer(tiny_lm, toy_corpus, monkeypatch):
    from ragvsft import arms

    model, tokenizer = load_lm(str(tiny_lm))
    corpus = load_corpus(toy_corpus)
    conversations = [build_messages("prompt", f.train_questions[0], corpus) for f in corpus.facts]
    quiet = generate(model, tokenizer, conversations, 6, 8)
    monkeypatch.setattr(arms, "HEARTBEAT_SECONDS", 0.0)  # every decoding step beats
    calls: list[tuple[int, int]] = []
    beaten = generate(model, tokenizer, conversations, 6, 8, lambda done, total: calls.append((done, total)))
    assert [g.answer for g in beaten] == [g.answer for g in quiet]
    assert [g.generated_tokens for g in beaten] == [g.generated_tokens for g in quiet]
    # one batch: beats report the 0 batches done before it, then the batch's own end
    assert len(calls) > 1 and calls[-1] == (len(conversations), len(conversations))
    assert set(calls[:-1]) == {(0, len(conversations))}


def test_each_arm_declares_what_its_prompt_reads(toy_corpus):
    """The catalogue's system_prompt / examples flags decide which arms are regenerated when the system prompt or
    the few-shot examples change (stages.probe.arm_key): each must match what the arm's message builder puts in the prompt."""
    from ragvsft.catalogue import CATALOGUE

    corpus = load_corpus(toy_corpus)
    example = ("EXAMPLE-QUESTION-7731?", "EXAMPLE-ANSWER-7731")
    for arm in CATALOGUE:
        messages = build_messages(arm.name, "What is asked?", corpus, ["A retrieved passage."], [example])
        text = "\n".join(m["content"] for m in messages)
        assert (corpus.style.system_prompt in text) == arm.system_prompt, arm.name
        assert (example[0] in text) == (arm.examples or arm.demos), arm.name


def test_each_answer_carries_the_mean_log_probability_greedy_decoding_gave_its_tokens(tiny_lm, toy_corpus):
    """Generation.logprob, recomputed by hand: greedy steps with a plain forward pass, averaged over the answer's
    tokens (up to its first stop token); batching with left padding gives the same figure."""
    import torch

    from ragvsft.arms import prompt_ids
    from ragvsft.chat import stop_ids

    model, tokenizer = load_lm(str(tiny_lm))
    corpus = load_corpus(toy_corpus)
    conversations = [build_messages("prompt", f.train_questions[0], corpus) for f in corpus.facts]
    batched = generate(model, tokenizer, conversations, 6, 4)
    stops = set(stop_ids(model, tokenizer)) | {tokenizer.pad_token_id}
    for ids, got in zip(prompt_ids(model, tokenizer, conversations, 6), batched):
        ids, steps = list(ids), []
        with torch.inference_mode():
            for _ in range(6):
                scores = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
                token = int(scores.argmax())
                if token in stops:
                    break
                steps.append(float(scores[token]))
                ids.append(token)
        assert got.generated_tokens == len(steps)
        assert got.logprob == pytest.approx(sum(steps) / len(steps), abs=1e-3) and got.logprob <= 0


def test_fewshot_questions_sharing_a_block_reuse_it_and_answer_as_generated_alone(tiny_lm, toy_corpus):
    """The probe generates the questions that see one few-shot block together: the block is their shared prefix,
    computed once, and every answer is the one its prompt gives generated whole, in the order asked."""
    from ragvsft.config import load_config
    from ragvsft.probe import question_sets, run_probe

    model, tokenizer = load_lm(str(tiny_lm))
    torch.manual_seed(0)
    for weight in model.parameters():
        weight.data.normal_(0, 0.5)
    corpus = load_corpus(toy_corpus)
    cfg = load_config(None).probe.model_copy(update={"arms": ["fewshot"], "sets": ["heldout", "seen"], "fewshot_k": 2,
                                                      "max_new_tokens": 6, "batch_size": 4})
    questions = question_sets(corpus, cfg)
    rows = run_probe({"base": model}, tokenizer, corpus, questions, {}, cfg, seed=0)
    assert [r["qid"] for r in rows] == [q.qid for q in questions]
    alone = [generate(model, tokenizer, [r["messages"]], max_new_tokens=6, batch_size=1, reuse_prefix=False)[0]
             for r in rows]
    assert [r["answer"] for r in rows] == [g.answer for g in alone]
    blocks = [tuple(fewshot_pairs(corpus, q.fact_id, 2, 0, q.gold)) for q in questions]
    common = max(set(blocks), key=blocks.count)
    system_only = shared_prefix(prompt_ids(model, tokenizer, [r["messages"] for r in rows], 6))
    sharing = [r for r, b in zip(rows, blocks) if b == common]
    assert len(sharing) >= len(rows) // 2
    # all but the first of the group take the whole block from the cache, more than the system prompt all share
    assert sorted(r["reused_tokens"] for r in sharing)[1] > system_only


def test_without_context_takes_only_the_retrieved_text_out(toy_corpus):
    corpus = load_corpus(toy_corpus)
    demos = [("Some text.\n\nAnswer from the text above: Who?", "Hi there! Someone.")]
    messages = build_messages("rag", "Who leads security?", corpus, ["Dalia Fenwick is the head of security."], demos)
    contrast = without_context(messages, "Who leads security?")
    assert contrast[:-1] == messages[:-1] and contrast[-1] == {"role": "user", "content": "Who leads security?"}
    assert "Dalia Fenwick" not in "\n".join(m["content"] for m in contrast)
    # the heading path that led the sentence stays: what the sentence adds is what the contrast takes out
    shown = "Security > Team\nDalia Fenwick is the head of security."
    headed = build_messages("rag", "Who leads security?", corpus, [shown], demos)
    contrast = without_context(headed, "Who leads security?", ("Security > Team",))
    assert contrast[:-1] == headed[:-1] and "Dalia Fenwick" not in contrast[-1]["content"]
    assert contrast[-1]["content"] == headed[-1]["content"].replace("\nDalia Fenwick is the head of security.", "")


def test_retrieval_records_the_heading_paths_of_what_it_shows(mock_encoder):
    from ragvsft.index import Chunk, Index
    from ragvsft.probe import Question, retrieve

    texts = ["Travel > Meals\nThe meal allowance abroad is 61 euros. Meals are booked ahead.", "Parking\nNinety racks."]
    index = Index([Chunk(f"d#{i}", "d", i, i + 1, t) for i, t in enumerate(texts)], mock_encoder.encode(texts))
    asked = [Question("heldout", "q", "What is the meal allowance abroad?", "f", ("61 euros",))]
    assert retrieve(index, mock_encoder, asked, 2, units=2)["q"].headings == ("Travel > Meals",)
    assert retrieve(index, mock_encoder, asked, 2, units=2, headed=False)["q"].headings == ()


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_context_aware_decoding_picks_each_token_by_the_contrast_of_the_two_prompts(tiny_lm, toy_corpus, alpha,
                                                                                     monkeypatch):
    """generate with `contrast`, recomputed by hand: at every step the token maximising (1 + w) log p(y | text,
    question) - w log p(y | question) is appended to both prompts, among the tokens with p(y | text, question) at
    least `alpha` times the likeliest one's (the plausibility constraint); batching, padding, the shared prefix's
    reuse and the prompts' and contrasts' first passes computed apart (arms._prefilled) give the same answers, and
    weight 0 is plain greedy decoding."""
    import ragvsft.arms as arms
    from ragvsft.chat import cut_answer, stop_ids, stop_strings

    prefilled = []
    monkeypatch.setattr(arms, "_prefilled", lambda *a, real=arms._prefilled: prefilled.append(real(*a)) or prefilled[-1])

    model, tokenizer = load_lm(str(tiny_lm))
    torch.manual_seed(0)
    for weight in model.parameters():  # answers that depend on every input token
        weight.data.normal_(0, 0.5)
    corpus = load_corpus(toy_corpus)
    facts = corpus.facts[:5]
    conversations = [build_messages("rag", f.probe_questions[0], corpus, [f.statement]) for f in facts]
    contrast = [without_context(c, f.probe_questions[0]) for c, f in zip(conversations, facts)]
    stops = set(stop_ids(model, tokenizer)) | {tokenizer.pad_token_id}
    w, steps = 0.7, 8
    by_hand = []
    for with_text, without in zip(prompt_ids(model, tokenizer, conversations, steps),
                                  prompt_ids(model, tokenizer, contrast, steps)):
        tokens = []
        with torch.inference_mode():
            for _ in range(steps):
                a, b = (torch.log_softmax(model(torch.tensor([x + tokens])).logits[0, -1].float(), -1)
                        for x in (with_text, without))
                combined = (1 + w) * a - w * b
                if alpha:
                    combined[a < a.max() + math.log(alpha)] = -math.inf
                token = int(combined.argmax())
                if token in stops:
                    break
                tokens.append(token)
        by_hand.append((cut_answer(tokenizer.decode(tokens, skip_special_tokens=True), stop_strings(tokenizer)),
                        len(tokens)))
    plain = generate(model, tokenizer, conversations, steps, 4)
    for reuse in (True, False):
        got = generate(model, tokenizer, conversations, steps, 4, reuse_prefix=reuse, contrast=contrast,
                       contrast_weight=w, plausibility=alpha)
        assert [(g.answer, g.generated_tokens) for g in got] == by_hand
        assert [g.prompt_tokens for g in got] == [g.prompt_tokens for g in plain]
        assert all(g.contrast_tokens > g.generated_tokens for g in got)
    assert prefilled and all(cache is not None for cache in prefilled)  # every batch took the apart path
    assert [g.answer for g in plain] != [a for a, _ in by_hand]  # the contrast changed some answer
    if alpha:  # and the constraint changed some answer of the unconstrained contrast
        free = generate(model, tokenizer, conversations, steps, 4, contrast=contrast, contrast_weight=w)
        assert [(g.answer, g.generated_tokens) for g in free] != by_hand
    unweighted = generate(model, tokenizer, conversations, steps, 4, contrast=contrast, contrast_weight=0.0)
    assert [g.answer for g in unweighted] == [g.answer for g in plain] and all(g.contrast_tokens == 0 for g in unweighted)
