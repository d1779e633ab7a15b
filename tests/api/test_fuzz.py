"""Schemathesis against /api/schema/: no 5xx on any endpoint, and every response matches the schema."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture
def api_schema(portal_dirs: dict[str, Path], settings: Any, django_user_model: Any) -> Iterator[Any]:
    from django.core import signals
    from django.core.wsgi import get_wsgi_application
    from django.db import close_old_connections

    from knowledge.services import apikeys
    from knowledge.services import documents as document_services

    settings.API_RATE_LIMIT = "100000/m"
    settings.LLM_MAX_TOKENS = 4  # generative examples stay short
    settings.ALLOWED_HOSTS = ["*"]
    document = document_services.document_create(
        file=io.BytesIO(b"The fuzzing corpus: a single note about lighthouses and their keepers."),
        filename="note.txt",
        dispatch=False,
    )
    document_services.document_process(document_id=document.pk)
    staff = django_user_model.objects.create_superuser(username="fuzzer", email="", password="x-fuzz-pass-1")
    _, raw = apikeys.apikey_create(user=staff, all_collections=True)
    # As Django's test client does: keep the test's database connection (and its transaction)
    # open across requests served by the real WSGI application.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    schema.fuzz_headers = {"Authorization": f"Token {raw}"}
    yield schema
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_endpoint_fails_or_breaks_its_schema(api_schema: Any) -> None:
    # One bounded Hypothesis run per operation (schemathesis' own pytest plugin does not run on
    # this pytest); each failure names its operation and the request that broke it.
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def run(case: Any) -> None:
            case.call_and_validate(headers=api_schema.fuzz_headers, checks=CHECKS)

        run()
    assert "POST /api/v1/rag/" in labels and "POST /api/v1/openai/chat/completions" in labels
