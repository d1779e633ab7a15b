"""The admin's bulk deletion removes the documents' vectors in one writer block (one new faiss generation)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.urls import reverse

from knowledge.models import Chunk, Document
from knowledge.services import engines


def test_deleting_selected_documents_writes_one_generation(
    admin_user_logged_in: Any, ingest: Callable[..., Document], text_file: Callable[[str, str], Path]
) -> None:
    documents = [
        ingest(text_file(f"bird{i}.txt", f"The {name} nests on cliffs and eats small fish. " * 20))
        for i, name in enumerate(["puffin", "gannet", "fulmar"])
    ]
    assert all(d.status == Document.Status.READY for d in documents)
    store = engines.get_store()
    before = store.state()
    response = admin_user_logged_in.post(
        reverse("admin:knowledge_document_changelist"),
        {"action": "delete_with_vectors", "_selected_action": [documents[0].pk, documents[1].pk]},
    )
    assert response.status_code == 302
    after = store.state()
    assert after["version"] == before["version"] + 1
    assert (
        after["chunks"]
        == Chunk.objects.filter(document=documents[2]).count()
        == before["chunks"] - sum(d.chunk_count for d in documents[:2])
    )
    assert list(Document.objects.values_list("pk", flat=True)) == [documents[2].pk]
