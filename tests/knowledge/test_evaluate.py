"""``manage.py evaluate``: a BEIR folder through the real pipeline and retriever, then cleaned away."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from ingestion.embedding import CompanionEmbedder
from knowledge.models import Chunk, Collection, Document
from knowledge.services import answering, engines
from knowledge.services.bulk import markdown_document
from knowledge.services.evaluation import answer_contains, mrr_at_k, ndcg_at_k, recall_at_k
from knowledge.services.evaluation_answers import (
    answer_words,
    first_sentence,
    left_out_ids,
    question_kinds,
)
from llm.text import repeated_ngram

# on_commit callbacks (stored files removed after the delete commits) only run outside a test transaction
pytestmark = pytest.mark.django_db(transaction=True)

CORPUS = [
    ("d1", "Zorbulat export", "The nightly export job is called Zorbulat and it starts at two in the morning."),
    ("d2", "Holidays", "Paid holidays must be taken before the end of May, or they are lost."),
    ("d3", "Électricité", "L'électricité sera coupée mardi matin dans tout le bâtiment pour des travaux."),
    ("d4", "Canteen", "The canteen is closed on Friday because of a staff meeting."),
    ("d5", "Passwords", "To reset a forgotten password, click *Forgot password* on the sign-in page."),
    ("d6", "Parking", "Visitors park in the underground car park, level minus two, next to the lifts."),
    ("d7", "Printers", "The printers on the third floor are replaced by new models in June."),
    ("d8", "Badges", "A lost badge is replaced by the reception desk for a fee of ten euros."),
]
QUERIES = [
    ("q1", "What is the Zorbulat job?", {"d1": 1}),
    ("q2", "Quand l'électricité sera-t-elle coupée dans le bâtiment ?", {"d3": 1}),
    ("q3", "Who replaces a lost badge?", {"d8": 1}),
]
ANSWERS = [("q1", "d1", ["two in the morning", "Zorbulat"]), ("q3", "d8", ["reception desk"])]
ANSWER_KEYS = {
    "answer_contains",
    "answer_contains_first",
    "answer_words_median",
    "answer_mode",
    "answers",
    "highlight_contains",
    "highlight_words_median",
}
KEYS = {"ndcg@10", "recall@10", "recall@100", "mrr@10", "queries", "search_ms_p50", "search_ms_p95"}


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    folder = tmp_path / "beir"
    folder.mkdir()
    lines = [json.dumps({"_id": i, "title": t, "text": x}, ensure_ascii=False) for i, t, x in CORPUS]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = [json.dumps({"_id": q, "text": text}, ensure_ascii=False) for q, text, _ in QUERIES]
    (folder / "queries.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, _, rel in QUERIES for d, s in rel.items()]
    (folder / "qrels.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _with_answers(folder: Path) -> Path:
    lines = [json.dumps({"_id": q, "corpus_id": d, "answers": a}) for q, d, a in ANSWERS]
    (folder / "answers.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _evaluate(folder: Path, cache: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = io.StringIO()
    call_command("evaluate", "--data", str(folder), "--embed-cache", str(cache), *args, stdout=out)
    text = out.getvalue()
    return json.loads(text.strip().splitlines()[-1]), text


def _nothing_left(portal_dirs: dict[str, Path]) -> None:
    assert not Collection.objects.filter(slug__startswith="eval-").exists()
    assert Document.objects.count() == 0 and Chunk.objects.count() == 0
    assert len(engines.get_store().ids()) == 0
    media = portal_dirs["media"] / "documents"
    assert not media.exists() or not any(media.iterdir())


def test_the_last_line_holds_the_metrics_and_the_collection_is_gone(
    beir: Path, tmp_path: Path, portal_dirs: dict[str, Path]
) -> None:
    metrics, output = _evaluate(_with_answers(beir), tmp_path / "cache")

    assert set(metrics) == KEYS | ANSWER_KEYS
    assert metrics["answer_mode"] == "extractive" and metrics["answers"] == len(ANSWERS)
    assert metrics["queries"] == 3
    # each query's words belong to its document alone
    assert metrics["recall@10"] == metrics["recall@100"] == 1.0
    assert 0.6 < metrics["ndcg@10"] <= 1.0 and 0.5 < metrics["mrr@10"] <= 1.0
    assert metrics["answer_contains"] == 1.0
    assert metrics["highlight_contains"] == 1.0  # each first source's quote holds the answer
    assert 0 < metrics["highlight_words_median"] <= 40
    assert "8 documents ready" in output
    _nothing_left(portal_dirs)


def test_without_answers_there_is_no_answer_metric_and_quiet_prints_only_the_json(beir: Path, tmp_path: Path) -> None:
    metrics, output = _evaluate(beir, tmp_path / "cache", "--quiet", "--k", "5", "--limit-queries", "2")

    assert set(metrics) == {"ndcg@5", "recall@5", "recall@100", "mrr@5", "queries", "search_ms_p50", "search_ms_p95"}
    assert metrics["queries"] == 2
    assert output.strip().count("\n") == 0


def test_keep_leaves_the_collection_and_a_second_run_reuses_the_cached_vectors(
    beir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first, _ = _evaluate(beir, cache, "--quiet", "--keep", "--collection-slug", "kept-eval")

    collection = Collection.objects.get(slug="kept-eval")
    assert collection.documents.filter(status=Document.Status.READY).count() == len(CORPUS)
    with sqlite3.connect(cache / "vectors.sqlite3") as connection:
        stored = dict(connection.execute("SELECT embedder, COUNT(*) FROM vectors GROUP BY embedder").fetchall())
    embedder = engines.get_embedder()
    chunks = Chunk.objects.filter(document__collection=collection).count()
    assert stored[embedder.name] == chunks  # one dense vector a chunk
    assert isinstance(embedder, CompanionEmbedder)
    assert all(0 < stored[model.name] <= chunks for model in embedder.models)  # each model's own vectors

    def no_embedding(self: Any, texts: Any, *model: int) -> Any:
        raise AssertionError(f"{len(texts)} passages embedded again")

    for method in ("embed_passages", "embed_companion"):  # the dense vectors and the companion's
        monkeypatch.setattr(type(engines.get_embedder()), method, no_embedding)
    second, _ = _evaluate(beir, cache, "--quiet")

    def without_timing(metrics: dict[str, Any]) -> dict[str, Any]:
        # latencies differ from run to run; the rest may not
        return {k: v for k, v in metrics.items() if k not in ("search_ms_p50", "search_ms_p95")}

    assert without_timing(second) == without_timing(first)
    with pytest.raises(CommandError, match="already exists"):
        _evaluate(beir, cache, "--quiet", "--collection-slug", "kept-eval")

    # --reuse measures the kept collection without ingesting it again, under other search settings too
    reused, _ = _evaluate(beir, cache, "--quiet", "--reuse", "--collection-slug", "kept-eval")
    assert without_timing(reused) == without_timing(first)
    dense, _ = _evaluate(
        beir, cache, "--quiet", "--reuse", "--collection-slug", "kept-eval", "--search", "retrievers=dense"
    )
    assert set(dense) == set(first)
    assert Collection.objects.filter(slug="kept-eval").exists()
    assert collection.documents.count() == len(CORPUS)
    with pytest.raises(CommandError, match="no collection nowhere to reuse"):
        _evaluate(beir, cache, "--quiet", "--reuse", "--collection-slug", "nowhere")
    with pytest.raises(CommandError, match="--reuse needs --collection-slug"):
        _evaluate(beir, cache, "--quiet", "--reuse")


def test_an_error_midway_still_removes_the_collection(
    beir: Path, tmp_path: Path, portal_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(answering, "answer_question_stream", broken)

    with pytest.raises(KeyboardInterrupt):
        _evaluate(_with_answers(beir), tmp_path / "cache", "--quiet")

    _nothing_left(portal_dirs)


def test_a_folder_without_the_beir_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match=r"corpus\.jsonl is missing"):
        _evaluate(tmp_path, tmp_path / "cache")


def test_markdown_documents_keep_their_text_literal() -> None:
    from ingestion.parsing.markdown_doc import MIME_TYPE  # noqa: F401  (the parser the files go through)

    text = "p < 0.05 & *not* emphasis_\n1. not a list\n# not a heading\n| not | a table |"
    document = markdown_document("A title #1", text)

    assert document.startswith("# A title \\#1\n\n")
    assert "\\*not\\*" in document and "1\\. not a list" in document and "\\# not a heading" in document


def test_metric_functions() -> None:
    relevant = {"a": 1, "b": 1}

    assert ndcg_at_k(["a", "b", "c"], relevant, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "a"], {"a": 1}, 10) == pytest.approx(1 / 1.584962500721156)
    assert recall_at_k(["c", "a"], relevant, 10) == 0.5
    assert recall_at_k(["c", "a"], relevant, 1) == 0.0
    assert mrr_at_k(["c", "d", "b"], relevant, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["c", "d", "b"], relevant, 2) == 0.0
    assert answer_contains("It costs  Ten\nEuros [1]", ["ten euros"])
    assert not answer_contains("It costs ten", ["ten euros", ""])


def test_answer_measures() -> None:
    answer = "The job is called Zorbulat. It starts at two [1][2] The canteen is closed [3]"
    assert first_sentence(answer) == "The job is called Zorbulat."
    assert first_sentence("Ten euros [1]") == "Ten euros"
    assert answer_words(answer) == 13
    assert repeated_ngram("a debt of the bank and a debt of the bank")
    assert not repeated_ngram("a debt of the bank and a debt to the state")


def test_articles_are_left_out_whole_and_questions_sorted_by_what_is_left() -> None:
    corpus = [("a-0", "Alpha", ""), ("a-1", "Alpha", ""), ("b-0", "Beta", ""), ("c-0", "", ""), ("d-0", "", "")]
    for seed in range(20):
        out = left_out_ids(corpus, 0.5, seed)
        assert {"a-0", "a-1"} <= out or not {"a-0", "a-1"} & out  # an article goes out whole
        assert len([key for key in ("a-0", "b-0", "c-0", "d-0") if key in out]) == 2  # 2 of 4 articles
    assert left_out_ids(corpus, 0.5, 7) == left_out_ids(corpus, 0.5, 7)
    assert left_out_ids(corpus, 0.0, 7) == set()
    answerable, unanswerable = question_kinds({"q1": {"a-0": 1}, "q2": {"b-0": 1}, "q3": {"a-0": 1, "b-0": 1}}, {"a-0"})
    assert (answerable, unanswerable) == ({"q2"}, {"q1"})  # q3, half out, is neither


def test_leaving_articles_out_measures_abstention(beir: Path, tmp_path: Path, portal_dirs: dict[str, Path]) -> None:
    # seed 0 leaves out d1 (Zorbulat) and d3 (électricité): q1 and q2 have no answer left in the collection
    metrics, output = _evaluate(_with_answers(beir), tmp_path / "cache", "--leave-out", "0.25", "--seed", "0")

    assert "Leaving 2 of 8 documents out" in output and "6 documents ready" in output
    assert metrics["queries"] == 1 and metrics["answers"] == 1  # retrieval and answers: q3 alone
    assert (metrics["questions_unanswerable"], metrics["questions_answerable"]) == (2, 1)
    assert metrics["abstain_unanswerable"] == 1.0 and metrics["abstain_answerable"] == 0.0
    _nothing_left(portal_dirs)
