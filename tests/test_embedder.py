"""Retriever tuning: the pairs hold only train questions, batches never repeat a chunk, tuning moves the real MiniLM."""

import random

import numpy as np
import pytest

from conftest import MockEncoder
from ragvsft.corpus import load_corpus
from ragvsft.embedder import Pair, hard_negatives, tune_encoder, tuning_pairs, unique_chunk_batches, validation_figures
from ragvsft.index import Index, chunk_units


def test_pairs_come_from_train_questions_only_and_hold_back_the_first(toy_corpus):
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, MockEncoder(), 16, 4)
    pairs, validation = tuning_pairs(corpus, index.chunks)
    probe = {q for f in corpus.facts for q in f.probe_questions}
    firsts = {f.train_questions[0] for f in corpus.facts}
    assert [q for q, _ in validation] == [f.train_questions[0] for f in corpus.facts]
    assert {p.question for p in pairs} == {"How much is the meal allowance per day?"}  # the only second train question
    assert not ({p.question for p in pairs} & (probe | firsts))
    chunk = {c.id: c.text for c in index.chunks}
    assert all(chunk[p.chunk_id] == p.text and "58 euros" in p.text for p in pairs)


def test_batches_never_hold_a_chunk_twice_as_a_positive_or_a_negative():
    pairs = [Pair(f"q{i}", "t", f"c{i % 5}", ("x",), frozenset(), "n", f"c{(i + 1) % 7}") for i in range(40)]
    batches = unique_chunk_batches(pairs, 4, random.Random(0))
    assert sorted(p[0] for b in batches for p in b) == sorted(p[0] for p in pairs)
    for batch in batches:  # a pair's negative may come from its own chunk (a sibling unit), never from another's
        ids = [id_ for p in batch for id_ in {p.chunk_id, p.negative_id}]
        assert len(batch) <= 4 and len(set(ids)) == len(ids)


def test_hard_negatives_are_the_closest_wrong_texts_and_never_name_the_answer():
    """The chunk and unit nearest the question that name the answer, and a gold chunk that does not, are passed over:
    a negative must be wrong, or the embedder would learn to push the answer away."""
    from ragvsft.index import Chunk

    texts = {"gold": "Travel\nThe meal allowance is 58 euros a day. Dinner receipts are kept for the meal allowance.",
             "also-gold": "Travel\nThe meal allowance per day is set every year.",
             "names-it": "Travel\nA meal allowance per day of 58 euros applies to every meal allowance day.",
             "wrong": "Travel\nThe meal allowance abroad is listed in the portal.",
             "far": "Travel\nHotels are booked in Roamly."}
    encoder = MockEncoder()
    chunks = [Chunk(cid, "travel.md", 0, len(text), text) for cid, text in texts.items()]
    index = Index(chunks, encoder.encode(list(texts.values())))
    question = "How much is the meal allowance per day?"
    unit = "Travel\nThe meal allowance is 58 euros a day."
    pairs = [Pair(question, texts["gold"], "gold", ("58 euros",), frozenset({"gold", "also-gold"})),
             Pair(question, unit, "gold", ("58 euros",), frozenset({"gold", "also-gold"}))]
    ranked = [c.id for c, _ in index.search(encoder, [question], 5)[0]]
    assert ranked.index("names-it") < ranked.index("wrong") and ranked.index("also-gold") < ranked.index("wrong")
    chunk_pair, unit_pair = hard_negatives(pairs, index, encoder, 3, True)
    assert (chunk_pair.negative_id, chunk_pair.negative) == ("wrong", texts["wrong"])
    assert unit_pair._replace(negative=None, negative_id=None) == pairs[1]
    assert "58 euros" not in unit_pair.negative and unit_pair.negative != unit
    # the unit chosen is the nearest of the top-3 chunks' units that do not name the answer, and a nearer one does
    units = [u for cid in ranked[:3] for u in chunk_units(texts[cid], True)]
    cosine = dict(zip(units, encoder.encode(units) @ encoder.encode([question])[0]))
    wrong_units = [u for u in units if "58 euros" not in u]
    assert unit_pair.negative == max(wrong_units, key=cosine.get)
    assert max(cosine[u] for u in units if "58 euros" in u and u != unit) > cosine[unit_pair.negative]


def gold_chunk_pairs(corpus, index) -> list[Pair]:
    """The first 8 (train question, chunk holding its fact's evidence) pairs of the toy corpus."""
    return [Pair(q, c.text, c.id, tuple(f.gold), frozenset({c.id})) for f in corpus.facts for q in f.train_questions
            for c in index.chunks if f.evidence in c.text][:8]


def test_tuning_moves_the_real_minilm_towards_the_gold_chunks(toy_corpus):
    import torch

    from ragvsft.models import load_encoder

    corpus = load_corpus(toy_corpus)
    encoder = load_encoder("minilm")
    index = Index.build(corpus, encoder, 32, 8)
    pairs = gold_chunk_pairs(corpus, index)
    before = [p.detach().clone() for p in encoder.model.parameters()][:3]
    untuned = encoder.encode([pairs[0][0]])
    figures = tune_encoder(encoder, pairs, epochs=2, learning_rate=5e-5, batch_size=4, seed=0)
    # the tuned weights embed the question anew: nothing kept from before tuning is served
    assert not np.allclose(encoder.encode([pairs[0][0]]), untuned, atol=1e-4)
    assert figures["steps"] >= 2 and figures["seconds"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, list(encoder.model.parameters())[:3]))
    validation = [(f.train_questions[0], {c.id for c in index.chunks if f.evidence in c.text}) for f in corpus.facts]
    assert validation_figures(Index.build(corpus, encoder, 32, 8), encoder, validation)["recall_at"]["3"] == 1.0


def test_bfloat16_tuning_keeps_float32_weights_and_follows_the_float32_update(toy_corpus):
    import torch

    from ragvsft.models import load_encoder

    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, load_encoder("minilm"), 32, 8)
    pairs = gold_chunk_pairs(corpus, index)
    updates = {}
    for precision in ("float32", "bfloat16"):
        encoder = load_encoder("minilm")
        start = [p.detach().clone() for p in encoder.model.parameters()]
        tune_encoder(encoder, pairs, epochs=1, learning_rate=5e-5, batch_size=4, seed=0, precision=precision)
        params = list(encoder.model.parameters())
        assert all(p.dtype == torch.float32 for p in params)  # autocast: only the forward pass is bfloat16
        updates[precision] = torch.cat([(p.detach() - s).flatten() for p, s in zip(params, start)])
    assert not torch.equal(updates["float32"], updates["bfloat16"])  # the forward pass did run in bfloat16
    # AdamW's first steps are nearly sign-wise, so rounding flips small gradients' signs: measured 0.42 (unrelated: 0)
    assert torch.nn.functional.cosine_similarity(updates["float32"], updates["bfloat16"], dim=0) > 0.3


def test_a_module_list_naming_a_foreign_class_is_refused_before_anything_is_imported(tmp_path):
    import json

    from ragvsft.files import InputError
    from ragvsft.models import SentenceEncoder

    folder = tmp_path / "embedder" / "model"
    folder.mkdir(parents=True)
    for modules, message in (([{"idx": 0, "name": "0", "path": "", "type": "os.system"}], "'os.system' at ''"),
                             ([{"idx": 0, "name": "0", "path": "../../elsewhere",
                                "type": "sentence_transformers.models.Transformer"}], "'../../elsewhere'"),
                             ({"modules": []}, "not a sentence-transformers module list")):
        (folder / "modules.json").write_text(json.dumps(modules))
        with pytest.raises(InputError, match=f"modules.json:1: .*{message}".replace("(", "\\(").replace(")", "\\)")):
            SentenceEncoder(folder)


def test_unit_pairs_add_the_sentence_that_names_the_answer_under_its_chunk(toy_corpus):
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, MockEncoder(), 64, 4)
    pairs, _ = tuning_pairs(corpus, index.chunks, units=True)
    question = "How much is the meal allowance per day?"
    assert [p[0] for p in pairs] == [question, question]
    (_, chunk_text, chunk_id, *_), (_, unit, unit_chunk, *_) = pairs
    assert unit_chunk == chunk_id and unit != chunk_text and "58 euros" in unit  # one batch never holds both
    assert "Roamly" not in unit and unit.startswith("Travel\n")  # the one sentence, under its heading path


def test_development_data_never_holds_a_scored_probe_question_or_an_unanswerable_one():
    """A set assertion over both shipped profiles: what tunes the embedder (train questions of the scored facts, train
    and probe questions of the facts the run does not score) never holds a scored fact's probe question, a reverse
    question or an unanswerable question."""
    from pathlib import Path

    from ragvsft.config import load_config
    from ragvsft.index import chunk_corpus
    from ragvsft.probe import development_facts
    from ragvsft.score import normalize

    repo = Path(__file__).resolve().parents[1]
    corpus = load_corpus(repo / "corpus")
    chunks = chunk_corpus(corpus, MockEncoder(), 96, 24)
    for profile, expected_development in (("quick", 148), ("full", 0)):
        cfg = load_config(repo / "experiments" / f"{profile}.yaml", corpus=str(repo / "corpus"))
        sample = cfg.sample_of(corpus)
        development = development_facts(corpus, sample)
        assert len(development) == expected_development
        pairs, validation = tuning_pairs(sample, chunks, True, True, development)
        tuned = {normalize(p.question) for p in pairs} | {normalize(q) for q, _ in validation}
        scored = {normalize(q) for f in sample.facts for q in f.probe_questions}
        scored |= {normalize(q) for f in sample.facts if f.reverse for q in f.reverse.questions}
        unanswerable = {normalize(u.question) for u in corpus.unanswerable}
        assert tuned and not tuned & scored and not tuned & unanswerable, profile
        if development:  # the probe's question style does reach the embedder, through facts nobody scores
            assert {normalize(q) for f in development for q in f.probe_questions} <= tuned
            # tune_development: train, the development facts tuned on as the scored ones are: train questions only
            pairs, validation = tuning_pairs(sample, chunks, True, True, development, probes=False)
            as_scored = {normalize(p.question) for p in pairs}
            probes = {normalize(q) for f in (*sample.facts, *development) for q in f.probe_questions}
            assert not as_scored & probes and not as_scored & unanswerable
            assert {normalize(q) for f in development for q in f.train_questions[1:]} <= as_scored
            assert {q for q, _ in validation} == {f.train_questions[0] for f in (*sample.facts, *development)}


def test_each_distinct_text_is_embedded_once_and_served_in_the_order_asked():
    from ragvsft.models import SentenceEncoder

    class Counting:  # stands in for the SentenceTransformer: a text's vector is its length, counted per call
        def __init__(self):
            self.asked = []

        def encode(self, texts, **_):
            self.asked.append(list(texts))
            return np.array([[len(t), 1.0] for t in texts])

        def get_embedding_dimension(self):
            return 2

    encoder = object.__new__(SentenceEncoder)
    encoder.model, encoder._vectors = Counting(), {}
    first = encoder.encode(["ab", "abc", "ab"])
    assert first[:, 0].tolist() == [2, 3, 2] and first.dtype == np.float32
    assert encoder.encode(["abcd", "abc"])[:, 0].tolist() == [4, 3]
    assert encoder.model.asked == [["ab", "abc"], ["abcd"]]  # repeats, within and across calls, are not embedded again
    assert encoder.encode([]).shape == (0, 2)
    encoder.forget()
    encoder.encode(["ab"])
    assert encoder.model.asked[-1] == ["ab"]
