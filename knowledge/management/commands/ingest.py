"""Bulk-ingest files and folders: ``manage.py ingest PATH... [--collection SLUG] [--sync | --wait] [--json]``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from knowledge.errors import DuplicateDocumentError, KnowledgeError
from knowledge.models import Collection, Document
from knowledge.services import documents as document_services

_FINAL = {Document.Status.READY, Document.Status.FAILED}


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts))
            )
        elif path.is_file():
            files.append(path)
        else:
            raise CommandError(f"No such file or folder: {raw}")
    return files


class Command(BaseCommand):
    help = (
        "Ingest files or folders (recursively). By default the work is queued for the workers; "
        "--sync runs it in this process, --wait queues it and waits for the workers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH")
        parser.add_argument(
            "--collection", default="default", metavar="SLUG", help="collection slug (default: default)"
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--sync", action="store_true", help="parse, embed and index in this process")
        mode.add_argument("--wait", action="store_true", help="queue for the workers and wait until each file is done")
        parser.add_argument("--json", action="store_true", help="print one JSON object per file")
        parser.add_argument("--timeout", type=float, default=3600.0, help="with --wait: seconds to wait at most")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            collection = Collection.objects.get(slug=options["collection"])
        except Collection.DoesNotExist as exc:
            raise CommandError(f"Unknown collection: {options['collection']}") from exc
        files = _expand(options["paths"])
        as_json: bool = options["json"]
        bar = None
        if not as_json and sys.stderr.isatty() and len(files) > 1:
            from tqdm import tqdm

            bar = tqdm(total=len(files), unit="file", file=sys.stderr)

        results: list[tuple[Path, Document | None, str]] = []
        for path in files:
            document, error = self._add(path, collection, sync=options["sync"], dispatch=not options["sync"])
            if options["sync"] and document is not None and document.status not in _FINAL:
                if bar is not None:
                    bar.set_postfix_str(path.name[:40])
                document_services.document_process(document_id=document.pk)
                document.refresh_from_db()
            results.append((path, document, error))
            if bar is not None and not options["wait"]:
                bar.update(1)
            if not options["wait"]:
                self._report(path, document, error, as_json)

        if options["wait"]:
            self._wait(results, options["timeout"], as_json, bar)
        if bar is not None:
            bar.close()

    def _add(self, path: Path, collection: Collection, *, sync: bool, dispatch: bool) -> tuple[Document | None, str]:
        try:
            with path.open("rb") as handle:
                return (
                    document_services.document_create(
                        file=handle, filename=path.name, collection=collection, dispatch=dispatch
                    ),
                    "",
                )
        except DuplicateDocumentError as exc:
            return exc.existing, ""
        except KnowledgeError as exc:
            return None, exc.message
        except OSError as exc:
            return None, f"The file could not be read: {exc.strerror or exc}"

    def _wait(self, results: list[tuple[Path, Document | None, str]], timeout: float, as_json: bool, bar: Any) -> None:
        deadline = time.monotonic() + timeout
        pending = {doc.pk for _, doc, _ in results if doc is not None}
        while pending and time.monotonic() < deadline:
            done = set(Document.objects.filter(pk__in=pending, status__in=_FINAL).values_list("pk", flat=True))
            if bar is not None and done:
                bar.update(len(done))
            pending -= done
            if pending:
                time.sleep(0.5)
        for path, document, error in results:
            if document is not None:
                document.refresh_from_db()
            self._report(path, document, error, as_json)
        if pending:
            raise CommandError(f"Timed out waiting for {len(pending)} document(s); are the workers running?")

    def _report(self, path: Path, document: Document | None, error: str, as_json: bool) -> None:
        record = {
            "file": str(path),
            "document_id": document.pk if document else None,
            "status": document.status if document else Document.Status.FAILED.value,
            "error": (document.error if document else error) or None,
            "chunks": document.chunk_count if document else 0,
            "pages": document.page_count if document else None,
        }
        if as_json:
            self.stdout.write(json.dumps(record, ensure_ascii=False))
            return
        line = f"{record['status']:<10} {path}"
        if record["document_id"] is not None:
            line += f"  (document {record['document_id']}, {record['chunks']} chunks"
            line += f", {record['pages']} pages)" if record["pages"] else ")"
        if record["error"]:
            line += f"  — {record['error']}"
        self.stdout.write(line)
