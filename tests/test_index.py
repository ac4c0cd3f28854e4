"""RAG side: section chunks (headings, table headers), token windows with overlap, FAISS search, save/load, gold chunks, recall@k and MRR."""

import json

import pytest

from ragvsft.corpus import load_corpus
from ragvsft.corpus import Fact
from ragvsft.index import UNIT_CHOICES, UnitQuestions, _joined, Chunk, unit_questions, evidence_unit, heading_line, Index, chunk_document, unit_choices, chunk_sections, chunk_units, document_blocks, select_units, gold_chunk_map, gold_chunks, retrieval_metrics


def test_chunks_overlap_and_cover_the_document(mock_encoder):
    text = " ".join(f"w{i}" for i in range(50))
    chunks = chunk_document("d.md", text, mock_encoder.token_spans(text), size=20, overlap=5)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w15", "w30"]
    assert chunks[0].text.split()[-5:] == chunks[1].text.split()[:5]
    assert chunks[-1].text.endswith("w49") and all(text[c.start:c.end] == c.text for c in chunks)
    assert chunk_document("d.md", "", [], 20, 5) == []


HANDBOOK = """# Travel Policy

Owner: Finance.

## Booking
Book through the portal.
- Economy below 6 hours.
- Rail under 4 hours.

## Allowances
| Item | Domestic | Abroad |
|---|---|---|
| Meal allowance | 46 euros | 61 euros |
| Car per km | 0.31 euros | 0.31 euros |
| Incidentals | none | 9 euros |

### Exceptions
Trade fairs double the cap.
"""


def test_section_chunks_keep_headings_and_table_headers(mock_encoder):
    blocks = document_blocks(HANDBOOK)
    assert [HANDBOOK[b.start:b.end] for b in blocks][:4] == [
        "Owner: Finance.", "Book through the portal.", "- Economy below 6 hours.", "- Rail under 4 hours."]
    assert blocks[-1].headings == ("Travel Policy", "Allowances", "Exceptions")
    chunks = chunk_sections("t.md", HANDBOOK, mock_encoder.token_spans, limit=24)
    by_body = {HANDBOOK[c.start:c.end]: c for c in chunks}
    # No chunk crosses a heading; each starts with its heading path.
    assert chunks[0].text == "Travel Policy\nOwner: Finance."
    assert by_body["Trade fairs double the cap."].text.startswith("Travel Policy > Allowances > Exceptions\n")
    # Table rows split into pieces of at most 24 tokens, each repeating the header row, none holding the rule line.
    rows = [c for c in chunks if "| Item |" in c.text]
    assert len(rows) >= 2 and all(len(mock_encoder.token_spans(c.text)) <= 24 for c in rows)
    assert all(c.text.startswith("Travel Policy > Allowances\n| Item | Domestic | Abroad |\n") for c in rows)
    assert not any("|---|" in c.text for c in chunks)
    bodies = [line for c in rows for line in HANDBOOK[c.start:c.end].splitlines()]
    assert sorted(bodies) == sorted(line for line in HANDBOOK.splitlines() if "euros |" in line or "none |" in line)  # every row in exactly one piece


def test_an_overlong_block_is_cut_to_the_limit(mock_encoder):
    text = "# Log\n" + " ".join(f"w{i}" for i in range(100))
    chunks = chunk_sections("log.md", text, mock_encoder.token_spans, limit=20)
    assert len(chunks) > 5 and all(len(mock_encoder.token_spans(c.text)) <= 20 for c in chunks)
    assert all(c.text.startswith("Log\n") and c.text.endswith(text[c.start:c.end]) for c in chunks)
    no_heading = chunk_sections("notes/plain.md", "Just text.", mock_encoder.token_spans, limit=20)
    assert [c.text for c in no_heading] == ["plain\nJust text."]


def test_section_gold_chunk_holds_a_table_row(mock_encoder):
    chunks = chunk_sections("t.md", HANDBOOK, mock_encoder.token_spans, limit=24)
    gold = gold_chunks(Fact("f", "s", "a", (), "t.md", "Car per km | 0.31 euros", ("q?",), ("p?",)), chunks, HANDBOOK)
    assert gold.whole and len(gold.ids) == 1
    assert "Domestic" in next(c.text for c in chunks if c.id in gold.ids)  # the header travels with the row


def test_units_keep_heading_and_table_header(mock_encoder):
    chunks = chunk_sections("t.md", HANDBOOK, mock_encoder.token_spans, limit=40)
    table = next(c for c in chunks if "| Item |" in c.text)
    units = chunk_units(table.text, headed=True)
    assert units[0] == "Travel Policy > Allowances\nItem: Meal allowance; Domestic: 46 euros; Abroad: 61 euros"
    prose = chunk_units("Booking\nBook through the portal. Rail under 4 hours.", headed=True)
    assert prose == ["Booking\nBook through the portal.", "Booking\nRail under 4 hours."]
    assert chunk_units("Plain window text. Second one.", headed=False) == ["Plain window text.", "Second one."]
    picked = select_units(mock_encoder, ["What is the car allowance per km?"], [[(table.id, table.text)]], 1, True)
    assert picked == [[(table.id, "Travel Policy > Allowances\nItem: Car per km; Domestic: 0.31 euros; Abroad: 0.31 euros")]]
    # a row whose cells do not pair up with the header's stays as written, under its header
    ragged = chunk_units("Fleet\n| Vessel | Built |\n|---|---|\n| MV Tern | 2015 | 74 m |", headed=True)
    assert ragged == ["Fleet\n| Vessel | Built |\n| MV Tern | 2015 | 74 m |"]
    # each list item is a unit of its own, without its marker (no sentence starts at "- "); a blank line ends a paragraph
    # an item's wrapped lines stay with it (cut there, "least six months in advance." was shown alone); a "---" rule
    # is no unit
    listed = chunk_units("Pay > Allowances\nAllowances are paid\n- Uniform: 240 pounds per year.\n- Overnight: 38\n"
                         "  pounds.\n2) Travel: free. Ask the office\n\n---\nfor a ticket", headed=True)
    assert listed == ["Pay > Allowances\nAllowances are paid", "Pay > Allowances\nUniform: 240 pounds per year.",
                      "Pay > Allowances\nOvernight: 38 pounds.", "Pay > Allowances\nTravel: free.",
                      "Pay > Allowances\nAsk the office", "Pay > Allowances\nfor a ticket"]
    # a unit's heading path is its first line, the one rule chunk_units and the shown texts' headings follow
    assert [heading_line(u) for u in (listed[1], "Plain window text.")] == ["Pay > Allowances", None]


def test_unit_choices_show_what_each_rule_picks(mock_encoder):
    first = Chunk("a#0", "a.md", 0, 1, "Leave\nSick leave needs a doctor's note. From the fourth day the note is due.")
    second = Chunk("b#0", "b.md", 0, 1, "Rules\n| Item | Limit |\n|---|---|\n| Doctor note | fourth sick day |\n| Hotel | 155 euros |")
    query = "When is a doctor's note due for sick leave?"
    # a train question attached to the hotel row, worded as the query: the bank lifts that row above the others
    bank = UnitQuestions({"Rules\nItem: Hotel; Limit: 155 euros": (query,)}, 2.0)
    shown = unit_choices(mock_encoder, [query], [[(first, 0.2), (second, 0.9)]], headed=True, bank=bank)
    assert set(shown) == set(UNIT_CHOICES)
    cosine = {u: float(mock_encoder.encode([u])[0] @ mock_encoder.encode([query])[0])
              for c in (first, second) for u in chunk_units(c.text, True)}
    best = max(cosine, key=cosine.get)
    assert shown["best unit"] == [[best]]
    assert shown["best two units"][0] == sorted(cosine, key=cosine.get, reverse=True)[:2]
    assert shown["best unit of the first chunk"][0][0].startswith("Leave\n")
    assert shown["whole chunks"] == [[first.text, second.text]]
    # The chunk's score lifts the second chunk's units above the first's.
    assert shown["best unit, chunk score added"][0][0].startswith("Rules\n")
    assert best != "Rules\nItem: Hotel; Limit: 155 euros"
    assert shown["best unit, train questions attached"] == [["Rules\nItem: Hotel; Limit: 155 euros"]]
    picked = select_units(mock_encoder, [query], [[(first.id, first.text), (second.id, second.text)]], 1, True, bank)
    assert picked == [[("b#0", "Rules\nItem: Hotel; Limit: 155 euros")]]
    assert select_units(mock_encoder, [query], [[(second.id, second.text)]], 1, True, UnitQuestions({}, 0.5)) == \
        select_units(mock_encoder, [query], [[(second.id, second.text)]], 1, True)  # no question attached: cosine
    # The unit before is joined under one heading line (and, for a row, one table header).
    assert _joined("Rules\n| Item | Limit |\n| A | 1 |", "Rules\n| Item | Limit |\n| B | 2 |") == \
        "Rules\n| Item | Limit |\n| A | 1 |\n| B | 2 |"
    assert _joined("Leave\nOne.", "Leave\nTwo.") == "Leave\nOne.\nTwo."
    assert unit_choices(mock_encoder, ["q"], [[]], headed=True, bank=bank)["best unit"] == [[]]


def test_unit_questions_attach_every_train_question_to_its_evidence_unit(toy_corpus, mock_encoder):
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, mock_encoder, size=40, overlap=0)
    bank = unit_questions(corpus.facts, index.chunks, corpus.documents, True, 0.5)
    gold = gold_chunk_map(corpus.facts, index.chunks, corpus.documents)
    text = {c.id: c.text for c in index.chunks}
    for fact in corpus.facts:
        for question in fact.train_questions:
            unit = evidence_unit([text[c] for c in sorted(gold[fact.id].ids)], list(fact.gold), question, True)
            assert unit is None or question in bank.by_unit[unit]
    attached = [q for qs in bank.by_unit.values() for q in qs]
    assert attached and len(attached) == len(set(attached))
    assert not {q for f in corpus.facts for q in f.probe_questions} & set(attached)  # probe questions never


def test_search_finds_the_document_with_the_keywords(toy_corpus, mock_encoder):
    index = Index.build(load_corpus(toy_corpus), mock_encoder, size=16, overlap=4)
    top = index.search(mock_encoder, ["What is the payload of the Widget W9?"], k=2)[0]
    assert top[0][0].document == "documents/products/widget.md" and top[0][1] >= top[1][1]


def test_bm25_and_hybrid_rank_by_shared_words(toy_corpus, mock_encoder):
    from ragvsft.index import RRF_K, _fuse

    index = Index.build(load_corpus(toy_corpus), mock_encoder, size=16, overlap=4)
    query = ["Are hotels booked in Roamly?"]
    lexical = index.using("bm25").search(mock_encoder, query, 3)[0]
    assert "Roamly" in lexical[0][0].text and [s for _, s in lexical] == sorted((s for _, s in lexical), reverse=True)
    assert index.using("bm25").search(mock_encoder, ["zzzz qqqq"], 3) == [[]]  # no shared term: nothing retrieved
    hybrid = index.using("hybrid").search(mock_encoder, query, 3)[0]
    assert "Roamly" in hybrid[0][0].text and len(hybrid) == 3
    # RRF: ranked 1st and 2nd beats ranked 1st in one list only; a tie goes to the lower position.
    both = 1 / (RRF_K + 1) + 1 / (RRF_K + 2)
    assert _fuse([[(5, 0.9), (7, 0.8)], [(7, 3.0), (5, 1.0)], [(9, 1.0)]]) == [(5, both), (7, both), (9, 1 / (RRF_K + 1))]
    with pytest.raises(ValueError, match="unknown retriever 'sparse'"):
        index.using("sparse")


def test_save_and_load_round_trip(tmp_path, toy_corpus, mock_encoder):
    index = Index.build(load_corpus(toy_corpus), mock_encoder, size=16, overlap=4)
    index.save(tmp_path / "index")
    loaded = Index.load(tmp_path / "index")
    query = ["Who is the head of security?"]
    assert [c.id for c, _ in loaded.search(mock_encoder, query, 3)[0]] == [c.id for c, _ in index.search(mock_encoder, query, 3)[0]]


def test_gold_chunks_contain_the_evidence(toy_corpus, mock_encoder):
    corpus = load_corpus(toy_corpus)
    index = Index.build(corpus, mock_encoder, size=16, overlap=4)
    gold = gold_chunk_map(corpus.facts, index.chunks, corpus.documents)["payload"]
    assert gold.whole and gold.ids and all("payload of 14 kg" in c.text for c in index.chunks if c.id in gold.ids)


def _fact(evidence: str) -> Fact:
    return Fact("f", "s", "a", (), "d.md", evidence, ("q?",), ("p?",))


def test_evidence_across_a_chunk_boundary_still_has_a_gold_chunk(mock_encoder):
    text = " ".join(f"w{i}" for i in range(40))
    chunks = chunk_document("d.md", text, mock_encoder.token_spans(text), size=10, overlap=2)
    # w7..w12 straddles the boundary between chunk 0 (w0-w9) and chunk 1 (w8-w17); chunk 0 holds 3 of its
    # words (w7-w9) minus the overlap, chunk 1 holds w8-w12: the larger part.
    straddling = gold_chunks(_fact("w7 w8  w9\nw10 w11 w12"), chunks, text)
    assert not straddling.whole and straddling.ids == {"d.md#1"}
    inside = gold_chunks(_fact("w11 w12"), chunks, text)
    assert inside.whole and inside.ids == {"d.md#1"}
    twice = gold_chunks(_fact("w9"), chunks, text)  # in the overlap: both chunks hold it whole
    assert twice.whole and twice.ids == {"d.md#0", "d.md#1"}


def test_every_shipped_fact_has_a_gold_chunk_with_windows(mock_encoder):
    from conftest import REPO

    corpus = load_corpus(REPO / "corpus")
    chunks = [c for d in corpus.documents
              for c in chunk_document(d.path, d.text, mock_encoder.token_spans(d.text), size=24, overlap=4)]
    gold = gold_chunk_map(corpus.facts, chunks, corpus.documents)
    assert all(g.ids for g in gold.values())
    assert any(not g.whole for g in gold.values())  # small windows do cut some evidence: the case is real


def test_recall_and_mrr():
    ranked = [["a", "b", "c"], ["x", "y", "g"], ["p", "q", "r"]]
    gold = [{"a"}, {"g"}, {"z"}]
    figures = retrieval_metrics(ranked, gold, [1, 3])
    assert figures["recall_at"] == {"1": round(1 / 3, 4), "3": round(2 / 3, 4)}
    assert figures["mrr"] == round((1 + 1 / 3) / 3, 4)


def test_an_interrupted_save_keeps_the_old_index_whole(tmp_path, toy_corpus, mock_encoder, monkeypatch):
    from ragvsft import index as index_module

    corpus = load_corpus(toy_corpus)
    old = Index.build(corpus, mock_encoder, size=16, overlap=4)
    old.save(tmp_path / "index", {"encoder": "configured"})
    before = {p.name: p.read_bytes() for p in (tmp_path / "index").iterdir()}
    new = Index.build(corpus, mock_encoder, size=8, overlap=2)
    assert len(new.chunks) != len(old.chunks)

    def fail(path, data):  # the chunk table is written, then the vectors fail
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "atomic_write_bytes", fail)
    with pytest.raises(OSError):
        new.save(tmp_path / "index")
    assert {p.name: p.read_bytes() for p in (tmp_path / "index").iterdir()} == before  # a matching pair, as it was
    assert len(Index.load(tmp_path / "index").chunks) == len(old.chunks)
    assert json.loads((tmp_path / "index" / "meta.json").read_text()) == {"encoder": "configured"}


def test_an_overlong_paragraph_is_cut_between_sentences(mock_encoder):
    sentences = [f"Item {i} has order code TRN-T{i}-WAK and weighs {i} kg." for i in range(8)]
    text = "# Kits\n" + " ".join(sentences)
    chunks = chunk_sections("kits.md", text, mock_encoder.token_spans, limit=30)
    assert len(chunks) > 2 and all(len(mock_encoder.token_spans(c.text)) <= 30 for c in chunks)
    bodies = [text[c.start:c.end] for c in chunks]
    assert all(c.text == "Kits\n" + body for c, body in zip(chunks, bodies))
    # every sentence whole in exactly one chunk, in order: no code is cut from its end
    assert [s for body in bodies for s in chunk_units(body, headed=False)] == sentences
