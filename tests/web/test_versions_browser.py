"""Document versions in a real browser: "replace (new version) or keep both?" on the documents page, a real
worker ingesting the new version, and the versions listed on the document's page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission

from knowledge.models import Document
from tests.conftest import wait_for
from tests.web.support import sign_in

pytestmark = [pytest.mark.slow, pytest.mark.worker]

expect: Any = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").expect

OLD = "Opening hours: the Bergen library opens at eight and closes at four."
NEW = "Opening hours: the Bergen library now opens at nine and closes at six, Saturdays included."


def test_a_file_of_the_same_name_asks_replace_or_keep_both(
    celery_worker: Any,
    new_page: Callable[..., Any],
    make_user: Callable[..., Any],
    ingest: Callable[..., Any],
    tmp_path: Path,
) -> None:
    curator = make_user("curator", staff=True)
    curator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_document", "add_document", "change_document", "delete_document"])
    )
    first = tmp_path / "v1" / "hours.txt"
    first.parent.mkdir()
    first.write_text(OLD, encoding="utf-8")
    document = ingest(first)
    assert document.status == "ready", document.error
    second = tmp_path / "v2" / "hours.txt"
    second.parent.mkdir()
    second.write_text(NEW, encoding="utf-8")

    page = new_page()
    sign_in(page, "curator", next_url="/documents/")
    page.set_input_files("#id_file", str(second))

    # the row asks; "Replace (new version)" sends the file again as the document's next version
    asking = page.locator('.upload-item[data-state="asking"]')
    expect(asking).to_contain_text("replace it (new version) or keep both?")
    asking.locator("button[data-choice=version]").click()
    done = page.locator('.upload-item[data-state="done"]')
    expect(done).to_contain_text("version 2")
    assert Document.objects.count() == 1

    # the worker ingests it; the document's page shows the versions, the new one current
    wait_for(lambda: Document.objects.filter(pk=document.pk, status="ready", version=2).exists(), timeout=180)
    page.goto(f"/documents/{document.pk}/")
    expect(page.locator('#version-2[data-current="true"]')).to_contain_text("Ready")
    expect(page.locator('#version-1[data-status="replaced"]')).to_be_visible()
    expect(page.locator(".chunk-text").first).to_contain_text("Saturdays")

    # the same name again, "Keep both": a document of its own
    third = tmp_path / "v3" / "hours.txt"
    third.parent.mkdir()
    third.write_text(NEW + " Closed on public holidays.", encoding="utf-8")
    page.goto("/documents/")
    page.set_input_files("#id_file", str(third))
    page.locator('.upload-item[data-state="asking"] button[data-choice=keep]').click()
    expect(page.locator('.upload-item[data-state="done"]')).to_contain_text("uploaded and queued")
    assert Document.objects.filter(original_name="hours.txt").count() == 2

    # the form's own answer, chosen before the upload, is not asked again
    fourth = tmp_path / "v4" / "hours.txt"
    fourth.parent.mkdir()
    fourth.write_text(NEW + " Closed in August.", encoding="utf-8")
    page.check("input[name=same_name][value=version]")
    page.set_input_files("#id_file", str(fourth))
    expect(page.locator('.upload-item[data-state="done"]').first).to_contain_text("version")
    expect(page.locator('.upload-item[data-state="asking"]')).to_have_count(0)
