"""Changing the embedding model without downtime: questions are answered from the old vectors (embedded with the
old model) while ``rebuild_index`` builds the new ones beside them, then the store switches at once.

Runs on both stores (``-m stores``: the postgres pass runs it on a pgvector server).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from ingestion.errors import IndexBusyError
from knowledge.models import Chunk, Document, SearchRebuild
from knowledge.selectors import readiness
from knowledge.services import engines
from knowledge.services import index as index_services
from tests.conftest import wait_for

pytestmark = [pytest.mark.stores, pytest.mark.django_db(transaction=True)]

TEXTS = {
    "glaciers.txt": "The glaciers of Iceland are retreating every year as the summers grow warmer.",
    "volcanoes.txt": "Etna and Vesuvius are the best known volcanoes of Italy; Etna erupts several times a year.",
    "cider.txt": "Cider is made by crushing apples and fermenting their juice with yeast in oak barrels.",
}


def _best(question: str) -> str:
    hits = engines.get_searcher().search(question, k=1)
    return Document.objects.get(pk=hits[0].document_id).original_name


def test_a_new_model_is_built_beside_the_old_one_while_questions_are_answered(
    settings: Any,
    ingest: Callable[..., Document],
    text_file: Callable[[str, str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, text in TEXTS.items():
        ingest(text_file(name, text))
    old = engines.store_identity()
    assert old.companion  # the default: e5 with the MiniLM companion
    assert _best("Which volcano of Italy erupts often?") == "volcanoes.txt"

    # The configuration moves on to another model (here: the same e5 without its companion).
    settings.RAG_COMPANION_EMBEDDER = ""  # the engines follow the changed setting
    new = engines.store_identity()
    assert new != old and engines.saved_identity() == old
    # questions are still embedded with the model that built the store, and answered from it
    assert _best("Which volcano of Italy erupts often?") == "volcanoes.txt"
    assert engines.get_searcher().search("glaciers of Iceland", k=1)[0].companion_score is not None

    halfway, resume = threading.Event(), threading.Event()
    seen: list[int] = []

    def slow_progress(count: int) -> None:
        seen.append(count)
        if len(seen) == 1:
            halfway.set()
            assert resume.wait(120)

    monkeypatch.setattr(index_services, "_BATCH", 1)  # one document a batch: the rebuild pauses after the first
    errors: list[BaseException] = []

    def rebuild() -> None:
        try:
            index_services.index_rebuild(progress=slow_progress)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()  # this thread's own connection, before the test database is dropped

    thread = threading.Thread(target=rebuild)
    thread.start()
    try:
        assert halfway.wait(300), errors
        run = wait_for(lambda: SearchRebuild.objects.filter(status=SearchRebuild.Status.RUNNING, done__gte=1).first())
        assert run.total == 3 and run.embedder == new.embedder
        # mid-rebuild: answers still come from the old vectors, with the old model
        assert _best("How is cider made?") == "cider.txt"
        assert engines.saved_identity() == old
        # an upload waits (its task is retried) rather than failing
        with pytest.raises(IndexBusyError, match="being rebuilt"):
            engines.get_store()
        # the status shows the rebuild's progress
        assert readiness()["index"]["rebuild"]["done"] >= 1
    finally:
        resume.set()
        thread.join(300)
    assert not errors, errors

    engines.reset()
    assert engines.saved_identity() == new
    assert SearchRebuild.objects.get().status == SearchRebuild.Status.DONE
    assert _best("Which volcano of Italy erupts often?") == "volcanoes.txt"
    assert engines.get_searcher().search("glaciers of Iceland", k=1)[0].companion_score is None
    assert index_services.index_check().consistent


def test_rebuild_index_prints_its_progress_and_records_the_run(
    ingest: Callable[..., Document], text_file: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ingest(text_file("glaciers.txt", TEXTS["glaciers.txt"]))
    out = io.StringIO()
    call_command("rebuild_index", stdout=out)
    assert "rebuilt: 1 chunks from 1 documents" in out.getvalue()
    assert "chunk" in capsys.readouterr().err  # the progress bar, on standard error
    run = SearchRebuild.objects.get()
    assert (run.status, run.done, run.total) == (SearchRebuild.Status.DONE, 1, 1)


def test_an_upload_that_failed_for_want_of_a_rebuild_is_queued_again_by_it(
    settings: Any, ingest: Callable[..., Document], text_file: Callable[[str, str], Path], eager_celery: None
) -> None:
    from ingestion.errors import REBUILD_HINT

    ingest(text_file("glaciers.txt", TEXTS["glaciers.txt"]))
    settings.RAG_COMPANION_EMBEDDER = ""  # another model is configured, and nobody has run rebuild_index yet
    waiting = ingest(text_file("cider.txt", TEXTS["cider.txt"]))
    assert waiting.status == Document.Status.FAILED and REBUILD_HINT in waiting.error
    assert waiting.file.storage.exists(waiting.file.name)  # the file is kept

    out = io.StringIO()
    call_command("rebuild_index", stdout=out)

    assert "rebuilt: 1 chunks from 1 documents" in out.getvalue()
    assert "1 documents that failed while the store awaited this rebuild were queued again" in out.getvalue()
    waiting.refresh_from_db()  # queued again, and (tasks run in this process here) indexed
    assert (waiting.status, waiting.error) == (Document.Status.READY, "")
    assert _best("How is cider made?") == "cider.txt"
    assert index_services.index_check().consistent


def test_a_new_version_that_failed_for_want_of_a_rebuild_is_queued_again_by_it(
    settings: Any, ingest: Callable[..., Document], text_file: Callable[[str, str], Path], eager_celery: None
) -> None:
    from ingestion.errors import REBUILD_HINT
    from knowledge.models import DocumentVersion
    from knowledge.services import documents as document_services

    document = ingest(text_file("cider.txt", TEXTS["cider.txt"]))
    settings.RAG_COMPANION_EMBEDDER = ""  # another model is configured, and nobody has run rebuild_index yet
    new_text = TEXTS["cider.txt"].replace("oak barrels", "steel tanks")
    document_services.document_replace(document=document, file=io.BytesIO(new_text.encode()), filename="cider.txt")
    document.refresh_from_db()
    assert (document.status, document.version) == (Document.Status.READY, 1)  # the first version still answers
    failed = DocumentVersion.objects.get(document=document, number=2)
    assert failed.status == DocumentVersion.Status.FAILED and REBUILD_HINT in failed.error

    out = io.StringIO()
    call_command("rebuild_index", stdout=out)

    assert "1 documents that failed while the store awaited this rebuild were queued again" in out.getvalue()
    document.refresh_from_db()
    assert (document.status, document.version) == (Document.Status.READY, 2)
    [hit] = engines.get_searcher().search("In what is cider fermented?", k=1)
    assert "steel tanks" in Chunk.objects.get(pk=hit.chunk_id).text  # the second version answers now
    assert index_services.index_check().consistent


def test_without_the_previous_model_on_record_the_store_asks_for_a_rebuild(
    settings: Any, ingest: Callable[..., Document], text_file: Callable[[str, str], Path]
) -> None:
    from ingestion.errors import IndexMismatchError
    from knowledge.models import SearchEmbedder

    ingest(text_file("glaciers.txt", TEXTS["glaciers.txt"]))
    SearchEmbedder.objects.all().delete()  # a store made by a release that did not record it
    settings.RAG_COMPANION_EMBEDDER = ""  # the engines follow the changed setting
    with pytest.raises(IndexMismatchError, match="rebuild_index"):
        engines.get_searcher().search("glaciers", k=1)


def test_a_rebuild_not_heard_from_for_half_an_hour_no_longer_holds_documents_back() -> None:
    from datetime import timedelta

    from django.utils import timezone

    run = SearchRebuild.objects.create(backend="faiss", embedder="new-model", total=10)
    assert index_services.rebuild_running()
    SearchRebuild.objects.filter(pk=run.pk).update(updated_at=timezone.now() - timedelta(minutes=31))

    assert not index_services.rebuild_running()  # its process was killed: the row stays "running" forever
    assert SearchRebuild.objects.running().count() == 0


def test_documents_wait_for_a_rebuild_without_using_up_their_retries() -> None:
    from celery.exceptions import Retry

    from knowledge import tasks
    from tests.conftest import _purge_broker

    task = tasks.document_ingest_task
    exhausted = task.max_retries  # a counted retry now would be one too many
    SearchRebuild.objects.create(backend="faiss", embedder="new-model", total=10)
    task.push_request(id="waiting-document", args=[1], kwargs={}, retries=exhausted, called_directly=False)
    try:
        with pytest.raises(Retry) as retried, tasks._waiting_for_rebuild(task):
            raise IndexBusyError("The search store is being rebuilt")
        # sent again through the real broker, in a minute, however many tries were made: the wait does not count
        assert retried.value.when == tasks.REBUILD_RETRY_SECONDS
        assert retried.value.sig.options["countdown"] == tasks.REBUILD_RETRY_SECONDS

        SearchRebuild.objects.update(status=SearchRebuild.Status.DONE)
        with pytest.raises(IndexBusyError), tasks._waiting_for_rebuild(task):
            raise IndexBusyError("another writer holds the lock")  # no rebuild: the ordinary, counted retry
    finally:
        task.pop_request()
        _purge_broker()  # the retry's message: no later worker should receive it
