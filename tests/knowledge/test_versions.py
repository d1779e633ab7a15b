"""Document versions: a new file answers only once it is ready, a failed one leaves the current one answering,
an older one can be restored, and a worker killed mid-version leaves no partial version."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from knowledge.errors import DuplicateDocumentError, NotFoundError, SameVersionError, VersionPendingError
from knowledge.models import AuditEvent, Chunk, Document, DocumentPart, DocumentVersion
from knowledge.services import answering, engines
from knowledge.services import documents as document_services
from knowledge.services import index as index_services
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db

OLD = "Travel policy: economy class for flights under six hours, booked through the Lisbon agency."
NEW = "Travel policy: trains are preferred for journeys under four hours, and night trains are welcome."


def _found(question: str, collection_id: int) -> list[answering.Source]:
    return answering.sources_retrieve(question=question, collection_ids=[collection_id], top_k=5, min_score=0.0)


def _texts(document: Document) -> str:
    return " ".join(Chunk.objects.filter(document=document).values_list("text", flat=True))


def _replace(document: Document, text: str, name: str = "policy.txt", **options: Any) -> Document:
    return document_services.document_replace(
        document=document, file=io.BytesIO(text.encode()), filename=name, dispatch=False, **options
    )


def _statuses(document: Document) -> list[tuple[int, str]]:
    return list(document.versions.order_by("number").values_list("number", "status"))


@pytest.fixture
def policy(ingest: Callable[..., Document], text_file: Callable[[str, str], Path]) -> Document:
    document = ingest(text_file("policy.txt", OLD))
    assert document.status == "ready", document.error
    return document


def test_a_first_upload_is_version_1(policy: Document) -> None:
    [version] = policy.versions.all()
    assert (policy.version, version.number, version.status) == (1, 1, "ready")
    assert (version.file.name, version.sha256, version.size) == (policy.file.name, policy.sha256, policy.size)
    assert version.chunk_count == policy.chunk_count > 0 and version.ready_at is not None


def test_the_current_version_answers_until_the_new_one_is_ready_then_its_chunks_go(policy: Document) -> None:
    old_chunks = set(Chunk.objects.filter(document=policy).values_list("pk", flat=True))
    _replace(policy, NEW, name="policy-2026.txt", actor=None)
    policy.refresh_from_db()
    # the document is queued for its new version; its current one still answers, and the store still holds it
    assert (policy.status, policy.version, policy.original_name) == ("queued", 1, "policy.txt")
    assert _statuses(policy) == [(1, "ready"), (2, "queued")]
    assert [s.document_id for s in _found("economy class flights Lisbon agency", policy.collection_id)][:1] == [
        policy.pk
    ]
    assert index_services.index_check().consistent

    outcome = document_services.document_process(document_id=policy.pk)
    policy.refresh_from_db()
    assert (outcome.status, policy.status, policy.version) == ("ready", "ready", 2)
    assert _statuses(policy) == [(1, "replaced"), (2, "ready")]
    new = policy.versions.get(number=2)
    assert (policy.original_name, policy.sha256, policy.size, policy.file.name) == (
        "policy-2026.txt",
        new.sha256,
        new.size,
        new.file.name,
    )
    assert "trains" in _texts(policy) and "economy" not in _texts(policy)
    assert not old_chunks & set(Chunk.objects.filter(document=policy).values_list("pk", flat=True))
    engines.reset()
    report = index_services.index_check()
    assert report.consistent and not old_chunks & {int(i) for i in engines.get_store().ids()}
    sources = _found("night trains journeys", policy.collection_id)
    assert sources and sources[0].document_id == policy.pk and "trains" in sources[0].text
    # the old version's file stays, for a restore
    assert policy.versions.get(number=1).file.storage.exists(policy.versions.get(number=1).file.name)


def test_a_new_version_is_audited_once_as_a_replace(policy: Document, django_user_model: Any) -> None:
    editor = django_user_model.objects.create_user(username="editor", password="pw-editor-123")
    _replace(policy, NEW, actor=editor)
    [event] = AuditEvent.objects.filter(action="document_replace")
    assert (event.username, event.document_id) == ("editor", policy.pk)
    assert policy.versions.get(number=2).created_by == editor


def test_a_failed_new_version_leaves_the_current_one_answering_with_the_reason(policy: Document) -> None:
    chunks = list(Chunk.objects.filter(document=policy).values_list("pk", flat=True))
    document_services.document_replace(
        document=policy, file=io.BytesIO(b"%PDF-1.4\n% broken\n"), filename="policy.pdf", dispatch=False
    )
    outcome = document_services.document_process(document_id=policy.pk)
    policy.refresh_from_db()
    failed = policy.versions.get(number=2)
    assert (outcome.status, policy.status, policy.version, policy.error) == ("ready", "ready", 1, "")
    assert failed.status == "failed" and failed.error
    assert list(Chunk.objects.filter(document=policy).values_list("pk", flat=True)) == chunks
    engines.reset()
    assert index_services.index_check().consistent
    assert _found("economy class flights Lisbon agency", policy.collection_id)[0].document_id == policy.pk

    # the next new version is accepted
    _replace(policy, NEW)
    assert document_services.document_process(document_id=policy.pk).status == "ready"
    policy.refresh_from_db()
    assert policy.version == 3 and _statuses(policy) == [(1, "replaced"), (2, "failed"), (3, "ready")]


def test_an_older_version_is_restored_as_a_new_one(policy: Document) -> None:
    _replace(policy, NEW)
    document_services.document_process(document_id=policy.pk)
    document_services.document_version_restore(document=policy, number=1, dispatch=False)
    policy.refresh_from_db()
    assert (policy.status, policy.version) == ("queued", 2)
    restored = policy.versions.get(number=3)
    assert (restored.restored_from, restored.sha256) == (1, policy.versions.get(number=1).sha256)
    assert restored.file.name != policy.versions.get(number=1).file.name  # its own copy

    document_services.document_process(document_id=policy.pk)
    policy.refresh_from_db()
    assert (policy.status, policy.version) == ("ready", 3)
    assert "economy" in _texts(policy) and "trains" not in _texts(policy)
    with pytest.raises(NotFoundError):
        document_services.document_version_restore(document=policy, number=9, dispatch=False)


def test_the_current_file_again_a_second_pending_version_and_another_documents_file_are_refused(
    policy: Document, ingest: Callable[..., Document], text_file: Callable[[str, str], Path]
) -> None:
    with pytest.raises(SameVersionError):
        _replace(policy, OLD)
    other = ingest(text_file("other.txt", "Expense reports are due on the fifth working day of each month."))
    with pytest.raises(DuplicateDocumentError):
        _replace(policy, "Expense reports are due on the fifth working day of each month.")
    _replace(policy, NEW)
    with pytest.raises(VersionPendingError):
        _replace(policy, NEW + " Updated.")
    # the bytes of a version being processed are taken too, by a new document as by another's version
    with pytest.raises(DuplicateDocumentError):
        document_services.document_create(file=io.BytesIO(NEW.encode()), filename="copy.txt", dispatch=False)
    with pytest.raises(DuplicateDocumentError):
        _replace(other, NEW)
    assert policy.versions.count() == 2 and other.versions.count() == 1


def test_a_document_without_a_ready_version_takes_the_new_file_at_once(
    ingest: Callable[..., Document], tmp_path: Path
) -> None:
    broken = tmp_path / "report.pdf"
    broken.write_bytes(b"%PDF-1.4\n% broken\n")
    document = ingest(broken)
    assert document.status == "failed"
    _replace(document, NEW, name="report.txt")
    document.refresh_from_db()
    assert (document.status, document.version, document.original_name, document.error) == (
        "queued",
        2,
        "report.txt",
        "",
    )
    assert _statuses(document) == [(1, "failed"), (2, "queued")]
    assert document_services.document_process(document_id=document.pk).status == "ready"
    document.refresh_from_db()
    assert _statuses(document) == [(1, "failed"), (2, "ready")]


def test_a_run_that_read_an_outdated_version_writes_nothing(policy: Document, monkeypatch: Any) -> None:
    from knowledge.services import document_runs

    # a new version arrives while a reingest of the current one is embedding: that run's result is dropped
    real_source = document_runs.document_source

    def source_then_new_version(document: Document) -> Any:
        read = real_source(document)
        _replace(policy, NEW)
        return read

    document_services.document_reingest(document=policy, dispatch=False)
    monkeypatch.setattr("knowledge.services.documents.document_source", source_then_new_version)
    document_services.document_process(document_id=policy.pk)
    monkeypatch.undo()
    policy.refresh_from_db()
    assert (policy.status, policy.version) == ("queued", 1) and "economy" in _texts(policy)
    assert document_services.document_process(document_id=policy.pk).status == "ready"
    policy.refresh_from_db()
    assert policy.version == 2 and "trains" in _texts(policy)


def test_deleting_a_document_removes_every_versions_file(
    policy: Document, django_capture_on_commit_callbacks: Any
) -> None:
    _replace(policy, NEW)
    document_services.document_process(document_id=policy.pk)
    files = [(v.file.storage, v.file.name) for v in policy.versions.all()]
    assert len({name for _, name in files}) == 2
    with django_capture_on_commit_callbacks(execute=True):
        document_services.document_delete(document=policy)
    assert not any(storage.exists(name) for storage, name in files)
    assert not DocumentVersion.objects.exists()


def test_a_new_version_of_a_big_pdf_is_read_in_page_ranges(policy: Document, settings: Any, tmp_path: Path) -> None:
    from tests.knowledge.test_split import _text_pdf

    settings.RAG_SPLIT_PAGES = 4
    big = _text_pdf(tmp_path / "policy.pdf", 9)
    with big.open("rb") as handle:
        document_services.document_replace(document=policy, file=handle, filename="policy.pdf", dispatch=False)
    assert document_services.document_process(document_id=policy.pk).status == "ready"
    policy.refresh_from_db()
    assert (policy.version, policy.page_count, policy.mime_type) == (2, 9, "application/pdf")
    assert policy.versions.get(number=2).page_count == 9
    assert not DocumentPart.objects.exists() and "economy" not in _texts(policy)


# --- A worker killed while it reads a new version ---------------------------------------------------------
LEASE_S = "6"


@pytest.mark.worker
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_version_leaves_no_partial_version_and_the_next_run_completes_it(
    celery_worker_factory: Any, corpus_dir: Path, tmp_path: Path
) -> None:
    from tests.knowledge.test_worker import _first_pages

    settings = {"RAG_LEASE_S": LEASE_S, "RAG_SPLIT_PAGES": "0"}
    path = tmp_path / "guide.txt"
    path.write_text(OLD, encoding="utf-8")
    with path.open("rb") as handle:
        document = document_services.document_create(file=handle, filename="guide.txt", dispatch=False)
    document_services.document_process(document_id=document.pk)
    old_chunks = set(Chunk.objects.filter(document=document).values_list("pk", flat=True))

    first = celery_worker_factory("w1", **settings)
    with transaction.atomic(), _first_pages(corpus_dir, tmp_path, 12).open("rb") as handle:
        document_services.document_replace(document=document, file=handle, filename="guide.pdf")
    wait_for(
        lambda: (
            Document.objects.filter(pk=document.pk, status="processing", stage="embedding")
            .exclude(lease_until=None)
            .exists()
        ),
        timeout=300,
        interval=0.1,
    )
    first.kill()

    # nothing of the new version was written: the current one answers, from the table and from the store
    document.refresh_from_db()
    assert document.version == 1
    assert set(Chunk.objects.filter(document=document).values_list("pk", flat=True)) == old_chunks
    engines.reset()
    assert index_services.index_check().consistent
    assert _found("economy class flights Lisbon agency", document.collection_id)[0].document_id == document.pk

    celery_worker_factory("w2", beat=True, **settings)
    started = time.monotonic()
    done = wait_for(
        lambda: Document.objects.filter(pk=document.pk, status="ready", version=2).first(),
        timeout=180,
        interval=0.5,
    )
    assert time.monotonic() - started < 180
    assert (done.lost_runs, done.page_count) == (1, 12)
    assert _statuses(done) == [(1, "replaced"), (2, "ready")]
    ordinals = list(Chunk.objects.filter(document=done).order_by("ordinal").values_list("ordinal", flat=True))
    assert ordinals == list(range(done.chunk_count))  # one set of chunks, none twice
    assert not old_chunks & set(Chunk.objects.filter(document=done).values_list("pk", flat=True))
    engines.reset()
    report = index_services.index_check()
    assert report.consistent, report
    assert report.vectors == Chunk.objects.count()


# --- The documents page and the admin ------------------------------------------------------------------------


@pytest.fixture
def curator(django_user_model: Any) -> Any:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="curator", password="pw-curator-123", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_document", "add_document", "change_document", "delete_document"])
    )
    return user


def _page_upload(client: Any, name: str, content: bytes, **data: str) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/documents/upload/", {"file": SimpleUploadedFile(name, content), **data}, HTTP_ACCEPT="application/json"
    )


def test_the_upload_page_asks_replace_or_keep_both_for_a_file_of_the_same_name(
    policy: Document, curator: Any, client: Any
) -> None:
    client.force_login(curator)
    asked = _page_upload(client, "policy.txt", NEW.encode())
    assert asked.status_code == 409
    body = asked.json()
    assert (body["code"], body["document"]["id"]) == ("same_name", policy.pk)
    assert "new version" in body["error"] and policy.versions.count() == 1

    replaced = _page_upload(client, "policy.txt", NEW.encode(), same_name="version")
    assert replaced.status_code == 202 and replaced.json()["document"]["id"] == policy.pk
    assert "version 2" in replaced.json()["notice"]
    assert _statuses(policy) == [(1, "ready"), (2, "queued")]

    # the very same bytes are a duplicate, not a question
    duplicate = _page_upload(client, "policy.txt", OLD.encode())
    assert (duplicate.status_code, duplicate.json()["code"]) == (409, "duplicate")

    kept = _page_upload(client, "policy.txt", (NEW + " A copy.").encode(), same_name="keep")
    assert kept.status_code == 201 and kept.json()["document"]["id"] != policy.pk
    assert Document.objects.filter(original_name="policy.txt").count() == 2

    # without the page's script, the question comes back as a message and the form offers the answers
    from django.core.files.uploadedfile import SimpleUploadedFile

    page = client.post("/documents/upload/", {"file": SimpleUploadedFile("policy.txt", b"Other words.")}, follow=True)
    text = page.content.decode()
    assert "replace it (new version) or keep both?" in text and 'name="same_name"' in text


def test_the_document_page_lists_versions_shows_a_failure_and_restores(
    policy: Document, curator: Any, client: Any
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(curator)
    response = client.post(
        f"/documents/{policy.pk}/versions/", {"file": SimpleUploadedFile("policy.pdf", b"%PDF-1.4\n% broken\n")}
    )
    assert response.status_code == 302
    page = client.get(f"/documents/{policy.pk}/").content.decode()
    assert 'id="version-pending"' in page and 'id="version-2"' in page
    document_services.document_process(document_id=policy.pk)
    page = client.get(f"/documents/{policy.pk}/").content.decode()
    assert 'id="version-failed"' in page and "Version 1 still answers" in page
    assert 'id="version-1" data-status="ready" data-current="true"' in page
    french = client.get(f"/documents/{policy.pk}/", HTTP_ACCEPT_LANGUAGE="fr").content.decode()
    assert "La version 2 a échoué" in french and "Restaurer" in french and "Envoyer une nouvelle version" in french

    assert client.post(f"/documents/{policy.pk}/versions/2/restore/").status_code == 302  # its file is broken anyway
    policy.refresh_from_db()
    assert policy.versions.get(number=3).restored_from == 2
    refused = client.post(f"/documents/{policy.pk}/versions/2/restore/", follow=True).content.decode()
    assert "still being processed" in refused
    current = client.post(f"/documents/{policy.pk}/versions/1/restore/", follow=True).content.decode()
    assert "already the current version" in current
    assert client.post(f"/documents/{policy.pk}/versions/9/restore/").status_code == 302
    assert policy.versions.count() == 3


def test_the_admin_uploads_a_new_version_and_restores_an_older_one(policy: Document, admin_user_logged_in: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    url = f"/admin/knowledge/document/{policy.pk}/change/"
    page = admin_user_logged_in.get(url).content.decode()
    assert 'name="new_version"' in page and 'name="versions-TOTAL_FORMS"' in page
    form = {
        "collection": policy.collection_id,
        "title": policy.title,
        "new_version": SimpleUploadedFile("policy-2026.txt", NEW.encode()),
        **_inline_management(),
    }
    assert admin_user_logged_in.post(url, form).status_code == 302
    policy.refresh_from_db()
    assert _statuses(policy) == [(1, "ready"), (2, "queued")]
    assert AuditEvent.objects.filter(action="document_replace", document_id=policy.pk).count() == 1
    document_services.document_process(document_id=policy.pk)

    page = admin_user_logged_in.get(url).content.decode()
    assert 'name="_restore_version" value="1"' in page
    restore = {
        "collection": policy.collection_id,
        "title": policy.title,
        "_restore_version": "1",
        **_inline_management(),
    }
    assert admin_user_logged_in.post(url, restore).status_code == 302
    policy.refresh_from_db()
    assert policy.versions.get(number=3).restored_from == 1
    document_services.document_process(document_id=policy.pk)
    policy.refresh_from_db()
    assert policy.version == 3 and "economy" in _texts(policy)


def _inline_management() -> dict[str, str]:
    forms = {}
    for prefix in ("versions", "chunks"):
        forms.update(
            {
                f"{prefix}-TOTAL_FORMS": "0",
                f"{prefix}-INITIAL_FORMS": "0",
                f"{prefix}-MIN_NUM_FORMS": "0",
                f"{prefix}-MAX_NUM_FORMS": "0",
            }
        )
    return forms


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_every_existing_document_its_version_1() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("knowledge", "0002_user_limits_audit_log")], [("knowledge", "0003_directories_versions_sources")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    collection = old.get_model("knowledge", "Collection").objects.create(slug="c", name="C")
    Old = old.get_model("knowledge", "Document")
    ready = Old.objects.create(
        collection=collection, title="a", file="documents/x/a.txt", original_name="a.txt", size=5, sha256="a" * 64,
        status="ready", page_count=2, chunk_count=3,
    )  # fmt: skip
    failed = Old.objects.create(
        collection=collection, title="b", file="documents/y/b.pdf", sha256="b" * 64, status="failed", error="Broken."
    )
    executor = MigrationExecutor(connection)
    executor.migrate(after)
    executor.loader.build_graph()
    new = executor.loader.project_state(after).apps
    Version = new.get_model("knowledge", "DocumentVersion")
    first = Version.objects.get(document_id=ready.pk)
    assert (first.number, first.status, first.file.name, first.size, first.chunk_count) == (
        1,
        "ready",
        "documents/x/a.txt",
        5,
        3,
    )
    assert Version.objects.get(document_id=failed.pk).error == "Broken."
    assert list(new.get_model("knowledge", "Document").objects.values_list("version", flat=True)) == [1, 1]
    MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
