"""RAG side: token windows with overlap, FAISS search, save/load, gold chunks, recall@k and MRR."""

from ragvsft.corpus import load_corpus
from ragvsft.index import Index, chunk_document, gold_chunk_ids, retrieval_metrics


def test_chunks_overlap_and_cover_the_document(mock_encoder):
    text = " ".join(f"w{i}" for i in range(50))
    chunks = chunk_document("d.md", text, mock_encoder.token_spans(text), size=20, overlap=5)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w15", "w30"]
    assert chunks[0].text.split()[-5:] == chunks[1].text.split()[:5]
    assert chunks[-1].text.endswith("w49") and all(text[c.start:c.end] == c.text for c in chunks)
    assert chunk_document("d.md", "", [], 20, 5) == []


def test_search_finds_the_document_with_the_keywords(toy_corpus, mock_encoder):
    index = Index.build(load_corpus(toy_corpus), mock_encoder, size=16, overlap=4)
    top = index.search(mock_encoder, ["What is the payload of the Widget W9?"], k=2)[0]
    assert top[0][0].document == "documents/products/widget.md" and top[0][1] >= top[1][1]


def test_save_and_load_round_trip(tmp_path, toy_corpus, mock_encoder):
    index = Index.build(load_corpus(toy_corpus), mock_encoder, size=16, overlap=4)
    index.save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index")
    query = ["Who is the head of security?"]
    assert [c.id for c, _ in loaded.search(mock_encoder, query, 3)[0]] == [c.id for c, _ in index.search(mock_encoder, query, 3)[0]]


def test_gold_chunks_contain_the_evidence(toy_corpus, mock_encoder):
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, mock_encoder, size=16, overlap=4)
    gold = gold_chunk_ids(corpus.facts[2], index.chunks)
    assert gold and all("payload of 14 kg" in c.text for c in index.chunks if c.id in gold)


def test_recall_and_mrr():
    ranked = [["a", "b", "c"], ["x", "y", "g"], ["p", "q", "r"]]
    gold = [{"a"}, {"g"}, {"z"}]
    figures = retrieval_metrics(ranked, gold, [1, 3])
    assert figures["recall_at"] == {"1": round(1 / 3, 4), "3": round(2 / 3, 4)}
    assert figures["mrr"] == round((1 + 1 / 3) / 3, 4)
