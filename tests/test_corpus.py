"""Corpus loading and validation: the shipped corpus passes; every rule has a broken fixture with the right file:line."""

import json

import pytest
from typer.testing import CliRunner

from conftest import FACTS, REPO, UNANSWERABLE, write_corpus
from ragvsft.cli import app
from ragvsft.corpus import corpus_stats, load_corpus
from ragvsft.files import InputError


def problems_of(root):
    with pytest.raises(InputError) as exc:
        load_corpus(root)
    return exc.value.problems


def test_shipped_corpus_is_valid_and_large_enough():
    corpus = load_corpus(REPO / "corpus")
    stats = corpus_stats(corpus)
    assert stats["documents"] >= 40 and len(stats["documents_by_kind"]) >= 6
    assert 150 <= stats["words"]["min"] and stats["words"]["max"] <= 600
    assert stats["facts"] >= 150 and stats["facts_with_reverse"] >= 40 and stats["questions"]["unanswerable"] >= 40
    assert all(len(f.train_questions) >= 4 and len(f.probe_questions) >= 2 for f in corpus.facts)
    assert stats["facts_per_document"]["without_facts"] == 0


def test_toy_corpus_loads_with_typed_records(toy_corpus):
    corpus = load_corpus(toy_corpus)
    assert [f.id for f in corpus.facts] == [f["id"] for f in FACTS]
    assert corpus.facts[1].reverse.gold == ["booking hotels", "hotels"]
    assert corpus.documents[0].kind in {"people", "policies", "products"}
    assert corpus.style.answer("X.") == "Hi there! X.\n— Acme Helpdesk"
    assert len(corpus.sha256) == 64


def test_subset_is_reproducible_and_keeps_documents(toy_corpus):
    corpus = load_corpus(toy_corpus)
    a, b = corpus.subset(2, 1, seed=3), corpus.subset(2, 1, seed=3)
    assert [f.id for f in a.facts] == [f.id for f in b.facts] and len(a.facts) == 2 and len(a.unanswerable) == 1
    assert a.documents == corpus.documents


def test_bad_json_line_is_reported_with_its_line(tmp_path):
    root = write_corpus(tmp_path / "c")
    lines = (root / "facts.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-1]  # drop the closing brace
    (root / "facts.jsonl").write_text("\n".join(lines) + "\n")
    assert any(p.startswith(f"{root / 'facts.jsonl'}:3: invalid JSON") for p in problems_of(root))


def test_duplicate_id_across_files(tmp_path):
    root = write_corpus(tmp_path / "c", unanswerable=[{"id": "meal", "question": "Which dental plan?"}])
    assert f"{root / 'unanswerable.jsonl'}:1: duplicate id 'meal' (first used at facts.jsonl:1)" in problems_of(root)


def test_evidence_missing_from_document(tmp_path):
    facts = [dict(FACTS[0], evidence="meal allowance is 99 euros"), *FACTS[1:]]
    root = write_corpus(tmp_path / "c", facts=facts)
    assert any(p.startswith(f"{root / 'facts.jsonl'}:1: 'evidence'") and "does not occur" in p for p in problems_of(root))


def test_evidence_match_ignores_whitespace(tmp_path):
    facts = [dict(FACTS[0], evidence="meal   allowance\non trips is 58 euros"), *FACTS[1:]]
    load_corpus(write_corpus(tmp_path / "c", facts=facts))


@pytest.mark.parametrize("path", ["../outside.md", "/etc/passwd", "documents/../../x.md"])
def test_document_path_must_stay_inside(tmp_path, path):
    facts = [FACTS[0], dict(FACTS[1], document=path), *FACTS[2:]]
    root = write_corpus(tmp_path / "c", facts=facts)
    assert any(p.startswith(f"{root / 'facts.jsonl'}:2: 'document'") for p in problems_of(root))


def test_missing_document(tmp_path):
    facts = [FACTS[0], dict(FACTS[1], document="documents/nope.md"), *FACTS[2:]]
    root = write_corpus(tmp_path / "c", facts=facts)
    assert f"{root / 'facts.jsonl'}:2: 'document' 'documents/nope.md' does not exist in the corpus folder" in problems_of(root)


def test_probe_equal_to_a_train_question_of_another_fact(tmp_path):
    facts = [FACTS[0], dict(FACTS[1], probe_questions=["what is the DAILY meal allowance"]), *FACTS[2:]]
    root = write_corpus(tmp_path / "c", facts=facts)
    assert any(p.startswith(f"{root / 'facts.jsonl'}:2: probe question") and "'meal'" in p for p in problems_of(root))


def test_empty_document_and_empty_file(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "documents/people/directory.md").write_text("  \n")
    (root / "unanswerable.jsonl").write_text("\n")
    problems = problems_of(root)
    assert f"{root / 'documents/people/directory.md'}:1: document is empty" in problems
    assert f"{root / 'unanswerable.jsonl'}:1: file is empty" in problems


def test_non_utf8_file(tmp_path):
    root = write_corpus(tmp_path / "c")
    (root / "documents/products/widget.md").write_bytes(b"# Widget\n\nprice \xff\xfe euros\n")
    assert any(p.startswith(f"{root / 'documents/products/widget.md'}:3: not valid UTF-8") for p in problems_of(root))


def test_unknown_and_missing_keys(tmp_path):
    facts = [dict(FACTS[0], colour="blue"), {k: v for k, v in FACTS[1].items() if k != "evidence"}, *FACTS[2:]]
    unanswerable = [dict(UNANSWERABLE[0], answer="none"), UNANSWERABLE[1]]
    root = write_corpus(tmp_path / "c", facts=facts, unanswerable=unanswerable)
    problems = problems_of(root)
    assert f"{root / 'facts.jsonl'}:1: unknown key 'colour'" in problems
    assert f"{root / 'facts.jsonl'}:2: missing key 'evidence'" in problems
    assert f"{root / 'unanswerable.jsonl'}:1: unknown key 'answer'" in problems


def test_corpus_yaml_unknown_key_and_style_markers(tmp_path):
    root = write_corpus(tmp_path / "c")
    meta = (root / "corpus.yaml").read_text()
    (root / "corpus.yaml").write_text(meta + "owner: someone\n")
    problems = problems_of(root)
    assert any(p.startswith(f"{root / 'corpus.yaml'}:") and "unknown key 'owner'" in p for p in problems)


def test_answer_must_occur_in_statement(tmp_path):
    facts = [dict(FACTS[0], answer="61 euros", aliases=["61"]), *FACTS[1:]]
    root = write_corpus(tmp_path / "c", facts=facts)
    assert f"{root / 'facts.jsonl'}:1: neither 'answer' nor any alias occurs in 'statement'" in problems_of(root)


def test_all_errors_are_reported_together(tmp_path):
    facts = [dict(FACTS[0], colour="blue"), dict(FACTS[1], document="documents/nope.md"), *FACTS[2:]]
    root = write_corpus(tmp_path / "c", facts=facts, unanswerable=[{"id": "meal", "question": "Which dental plan?"}])
    assert len(problems_of(root)) == 3


def test_cli_check_exit_codes(tmp_path, toy_corpus):
    runner = CliRunner()
    ok = runner.invoke(app, ["corpus", "check", str(toy_corpus)])
    assert ok.exit_code == 0 and "4 facts" in ok.output
    (toy_corpus / "facts.jsonl").write_text(json.dumps(dict(FACTS[0], colour="x")) + "\n")
    bad = runner.invoke(app, ["corpus", "check", str(toy_corpus)])
    assert bad.exit_code == 2 and "facts.jsonl:1: unknown key 'colour'" in bad.output


def test_cli_stats_json(toy_corpus):
    result = CliRunner().invoke(app, ["corpus", "stats", str(toy_corpus), "--json"])
    stats = json.loads(result.output)
    assert stats["facts"] == 4 and stats["questions"] == {"train": 5, "heldout": 4, "reverse": 2, "unanswerable": 2}


def test_reverse_and_unanswerable_questions_equal_to_a_train_question(tmp_path):
    facts = json.loads(json.dumps(FACTS))
    facts[1]["reverse"]["questions"] = ["who is the HEAD of security?"]  # fact 4's train question, other case
    unanswerable = UNANSWERABLE + [{"id": "leak", "question": "Where are hotels booked?"}]
    problems = problems_of(write_corpus(tmp_path / "c", facts=facts, unanswerable=unanswerable))
    assert any(p.endswith("facts.jsonl:2: reverse question 'who is the HEAD of security?' equals a train question "
                          "of fact 'security'") for p in problems)
    assert any(p.endswith("unanswerable.jsonl:3: question 'Where are hotels booked?' equals a train question of fact "
                          "'portal'") for p in problems)


def test_second_corpus_is_valid():
    """experiments/corpora/harbourline, the corpus the quick profile is also benchmarked on, keeps the format."""
    stats = corpus_stats(load_corpus(REPO / "experiments" / "corpora" / "harbourline"))
    assert stats["facts"] >= 40 and stats["questions"]["unanswerable"] >= 10 and stats["facts_with_reverse"] >= 4
    assert stats["facts_per_document"]["without_facts"] == 0


@pytest.mark.parametrize("folder", ["corpus", "experiments/corpora/harbourline"])
def test_shipped_corpus_sets_never_overlap(folder):
    """Leakage guard over each whole shipped corpus: what is trained on is never probed, in any set."""
    from ragvsft.config import load_config
    from ragvsft.finetune import build_finetune_set
    from ragvsft.score import normalize

    corpus = load_corpus(REPO / folder)
    train = {normalize(q) for f in corpus.facts for q in f.train_questions}
    probe = {normalize(q) for f in corpus.facts for q in f.probe_questions}
    reverse = {normalize(q) for f in corpus.facts if f.reverse for q in f.reverse.questions}
    unanswerable = {normalize(u.question) for u in corpus.unanswerable}
    assert train and probe and reverse and unanswerable
    assert not train & probe and not train & reverse and not train & unanswerable
    assert not probe & unanswerable and not reverse & unanswerable
    trained = {normalize(r["question"]) for r in build_finetune_set(corpus)}
    assert trained == train
    # every probe profile's sample too
    for profile in ("quick", "full"):
        cfg = load_config(REPO / "experiments" / f"{profile}.yaml")
        sample = corpus.subset(cfg.subset.facts, cfg.subset.unanswerable, cfg.seed)
        trained = {normalize(r["question"]) for r in build_finetune_set(sample)}
        assert not trained & (probe | reverse | unanswerable)


def test_a_document_linking_outside_the_corpus_is_refused(tmp_path):
    root = write_corpus(tmp_path / "c")
    secret = tmp_path / "secret.md"
    secret.write_text("# Not a corpus document\n\nprivate text\n")
    (root / "documents" / "policies" / "leak.md").symlink_to(secret)
    problems = problems_of(root)
    assert any(p.startswith(f"{root / 'documents' / 'policies' / 'leak.md'}:0: a link to a file outside") for p in problems)


def test_an_empty_style_marker_is_refused(tmp_path):
    from conftest import STYLE

    meta = {"name": "acme", "organisation": "Acme Ltd", "description": "A toy corpus.",
            "style": dict(STYLE, markers=["^Hi there!", ""])}
    root = write_corpus(tmp_path / "c", meta=meta)
    assert any("an empty marker matches every answer" in p for p in problems_of(root))


def test_a_backtracking_style_marker_is_refused_and_cannot_hang_scoring(tmp_path):
    import time

    from conftest import STYLE
    from ragvsft.score import follows_style

    evil = "^Hi there!(a|aa)+$"
    meta = {"name": "acme", "organisation": "Acme Ltd", "description": "A toy corpus.",
            "style": dict(STYLE, markers=["^Hi there!", evil])}
    root = write_corpus(tmp_path / "c", meta=meta)
    began = time.perf_counter()
    assert any("backtracks without end" in p and p.startswith(f"{root / 'corpus.yaml'}:") for p in problems_of(root))
    assert time.perf_counter() - began < 5
    began = time.perf_counter()
    assert follows_style("Hi there!" + "a" * 60 + "!", [evil]) is False  # would take hours with an unbounded engine
    assert time.perf_counter() - began < 2
    assert follows_style("Hi there! fine.\n— Quellmark", ["^Hi there!", "Quellmark$"]) is True


def test_a_deeply_nested_json_line_is_a_message(tmp_path):
    root = write_corpus(tmp_path / "c")
    with open(root / "facts.jsonl", "a") as fh:
        fh.write("[" * 100000 + "]" * 100000 + "\n")
    problems = problems_of(root)
    assert any(p.startswith(f"{root / 'facts.jsonl'}:5:") and "nested too deeply" in p for p in problems)


def test_a_document_name_that_is_not_utf8_is_a_message(tmp_path):
    import os

    root = write_corpus(tmp_path / "c")
    name = os.path.join(os.fsencode(root / "documents"), b"caf\xe9.md")
    with open(name, "wb") as fh:
        fh.write(b"# Cafe\n\nThe cafe opens at 8.\n")
    assert any("file name is not valid UTF-8" in p for p in problems_of(root))


MEAL_UPDATE = {"id": "meal", "answer": "64 euros", "aliases": ["64", "€64"],
               "statement": "The daily meal allowance on trips is 64 euros.", "evidence": "meal allowance on trips is 64 euros"}


def write_updates(root, rows, documents=None):
    """An updates/ part: new versions of documents (default: travel.md with 64 euros) and changed facts."""
    from conftest import DOCUMENTS

    new = {"documents/policies/travel.md": DOCUMENTS["documents/policies/travel.md"].replace("58", "64")}
    for rel, text in (new if documents is None else documents).items():
        (root / "updates" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "updates" / rel).write_text(text, encoding="utf-8")
    (root / "updates").mkdir(exist_ok=True)
    (root / "updates" / "facts.jsonl").write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows),
                                                  encoding="utf-8")
    return root


def test_the_shipped_corpus_has_at_least_20_updates():
    corpus = load_corpus(REPO / "corpus")
    assert len(corpus.updates) >= 20 and corpus.updates_sha256
    new = corpus.updated()
    changed = {u.id for u in corpus.updates}
    for old, fact in zip(corpus.facts, new.facts):
        assert (fact.answer != old.answer) == (fact.id in changed) and fact.train_questions == old.train_questions
    texts = {d.path: d.text for d in new.documents}
    assert all(" ".join(f.evidence.split()) in " ".join(texts[f.document].split()) for f in new.facts)


def test_updated_replaces_documents_and_facts_and_keeps_questions(toy_corpus):
    corpus = load_corpus(write_updates(toy_corpus, [MEAL_UPDATE]))
    new = corpus.updated()
    meal = next(f for f in new.facts if f.id == "meal")
    assert meal.gold == ["64 euros", "64", "€64"] and meal.probe_questions == tuple(FACTS[0]["probe_questions"])
    assert "64 euros" in next(d.text for d in new.documents if d.path.endswith("travel.md"))
    assert new.updates == () and corpus.sha256 == load_corpus(toy_corpus).sha256  # updates hash apart
    assert load_corpus(write_corpus(toy_corpus.parent / "plain")).updates == ()


@pytest.mark.parametrize("rows, documents, expected", [
    ([dict(MEAL_UPDATE, id="nope")], None, "facts.jsonl:1: id 'nope' is not a fact in facts.jsonl"),
    ([{k: v for k, v in MEAL_UPDATE.items() if k != "evidence"}], None, "facts.jsonl:1: missing key 'evidence'"),
    ([dict(MEAL_UPDATE, colour="red")], None, "facts.jsonl:1: unknown key 'colour'"),
    ([MEAL_UPDATE, MEAL_UPDATE], None, "facts.jsonl:2: duplicate id 'meal' (first changed at line 1)"),
    ([dict(MEAL_UPDATE, answer="", aliases=[])], None, "facts.jsonl:1: 'answer' must be non-empty strings"),
    ([dict(MEAL_UPDATE, answer="58 euros", aliases=["58"], statement="It is 58 euros.")], None,
     "cannot be told apart from the old '58 euros'"),
    ([dict(MEAL_UPDATE, statement="The allowance went up.")], None,
     "facts.jsonl:1: neither 'answer' nor any alias occurs in 'statement'"),
    ([MEAL_UPDATE], {}, "facts.jsonl:1: the fact's document documents/policies/travel.md has no new version"),
    ([dict(MEAL_UPDATE, evidence="allowance is 70 euros")], None, "'evidence' 'allowance is 70 euros' does not occur in updates/"),
    ([MEAL_UPDATE], {"documents/policies/travel.md": "# Travel\n\nThe daily meal allowance on trips is 64 euros.\n"},
     "fact 'portal' (facts.jsonl:2) is not changed, but its evidence no longer occurs in updates/"),
    ([MEAL_UPDATE], {"documents/policies/travel.md": "# Travel\n\nThe daily meal allowance on trips is 64 euros. "
                     "Hotels are booked in the Roamly portal.\n", "documents/new.md": "# New\n\nA new page.\n"},
     "documents/new.md:0: a new version of documents/new.md, which is not in the corpus"),
    (['{"id": "meal",\n'], None, "facts.jsonl:1: invalid JSON"),
    ([MEAL_UPDATE, "[1, 2]\n"], None, "facts.jsonl:2: each line must be a JSON object"),
])
def test_a_broken_updates_part_names_file_and_line(toy_corpus, rows, documents, expected):
    problems = problems_of(write_updates(toy_corpus, rows, documents))
    assert any(expected in p and "/updates/" in p for p in problems), problems


def test_an_update_whose_new_answer_is_already_in_a_question_is_refused(toy_corpus):
    row = dict(MEAL_UPDATE, answer="day", aliases=[], statement="It is per day.", evidence="meal allowance on trips is 64 euros")
    problems = problems_of(write_updates(toy_corpus, [row]))
    assert any("already contains the new answer" in p for p in problems), problems


def test_updates_that_is_a_file_is_refused(toy_corpus):
    (toy_corpus / "updates").write_text("not a folder")
    assert any("updates:0: must be a folder" in p for p in problems_of(toy_corpus))
