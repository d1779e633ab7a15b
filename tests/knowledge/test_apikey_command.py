"""``manage.py apikey``: a key without ``--collection`` reads all collections, with it only those."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import call_command

from knowledge.models import ApiKey, Collection
from knowledge.services.apikeys import apikey_authenticate

pytestmark = pytest.mark.django_db


def _create(*args: str) -> tuple[ApiKey, str]:
    out = io.StringIO()
    call_command("apikey", "create", *args, stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    key = apikey_authenticate(raw)
    assert key is not None
    return key, out.getvalue()


def test_a_key_without_collections_reads_all_and_one_with_them_only_those(db: Any) -> None:
    wide, _ = _create("--user", "robot")
    assert wide.all_collections and not wide.collections.exists()
    hr = Collection.objects.create(slug="hr", name="HR")
    narrow, printed = _create("--user", "robot", "--collection", "hr")
    assert not narrow.all_collections and list(narrow.collections.all()) == [hr]
    assert "(hr;" in printed

    listing = io.StringIO()
    call_command("apikey", "list", stdout=listing)
    reach = {line.split("\t")[0]: line.split("\t")[3] for line in listing.getvalue().splitlines()}
    assert reach == {wide.prefix: "*", narrow.prefix: "hr"}
    hr.delete()  # the limited key keeps no collection: it reads nothing, and says so
    listing = io.StringIO()
    call_command("apikey", "list", stdout=listing)
    assert f"{narrow.prefix}\trobot\tactive\t-\t" in listing.getvalue()
