"""Hostile files fail fast with a reason instead of holding a worker."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from ingestion.errors import DocumentTooLargeError, IngestionError, MemoryLimitError
from ingestion.parsing import FileFacts, inspect_file, parse_file
from ingestion.parsing.sniffing import PDF
from ingestion.sandbox import memory_limit_supported, run_limited


def _pdf(objects: list[bytes]) -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def _page_tree_pdf(fanout: int) -> bytes:
    """fanout × fanout blank pages in a few kilobytes: every leaf is the same page object."""
    return _pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [" + b" ".join([b"3 0 R"] * fanout) + b"] /Count %d >>" % (fanout * fanout),
            b"<< /Type /Pages /Parent 2 0 R /Kids [" + b" ".join([b"4 0 R"] * fanout) + b"] /Count %d >>" % fanout,
            b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] >>",
        ]
    )


def test_a_pdf_with_a_million_empty_pages_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "million.pdf"
    path.write_bytes(_page_tree_pdf(1000))
    with pytest.raises(DocumentTooLargeError, match=r"safety limit|over the limit"):
        parse_file(path)


def test_a_pdf_over_the_page_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.pdf"
    path.write_bytes(_page_tree_pdf(80))  # 6,400 pages
    with pytest.raises(DocumentTooLargeError, match="6400 pages, over the limit of 5000"):
        parse_file(path, max_pages=5000)


def test_a_zip_bomb_disguised_as_docx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
            'wordprocessingml.document.main+xml"/></Types>',
        )
        with archive.open("word/document.xml", "w") as member:
            block = b"<w:t>" + b"A" * (1 << 20) + b"</w:t>"
            for _ in range(24):  # 24 MB unpacked from about 25 KB
                member.write(block)
    assert path.stat().st_size < 200_000
    with pytest.raises(DocumentTooLargeError, match="unpacks to 24 MB, over the 16 MB limit"):
        parse_file(path, max_unpacked_mb=16)


@pytest.mark.parametrize(
    "payload",
    [
        b"PK\x03\x04" + b"\xff" * 100,  # a broken zip named .docx
        b"%PDF-1.7\n" + b"\x00" * 200,  # a PDF header and nothing behind it
        b"\xff\xfe\x00\x00" * 50,  # a UTF-32 BOM and garbage
    ],
)
def test_garbage_behind_a_known_header_fails_with_a_reason(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "garbage.docx"
    path.write_bytes(payload)
    with pytest.raises(IngestionError) as caught:
        parse_file(path)
    assert caught.value.message and "Traceback" not in caught.value.message


def inflating_pdf(streams: int = 6, inflate_mb: int = 70) -> bytes:
    """A PDF of a few hundred KB whose every object sits in its own object stream inflating to ``inflate_mb`` MB.

    Its catalog, page tree and pages are all such objects, so merely counting its pages inflates them all.
    """
    import struct
    import zlib

    pages = streams - 2
    kids = b" ".join(b"%d 0 R" % (102 + i) for i in range(pages))
    bodies = {
        100: b"<< /Type /Catalog /Pages 101 0 R >>",
        101: b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
    }
    bodies.update({102 + i: b"<< /Type /Page /Parent 101 0 R /MediaBox [0 0 612 792] >>" for i in range(pages)})
    out = io.BytesIO()
    out.write(b"%PDF-1.5\n")
    offsets: dict[int, int] = {}
    holder: dict[int, int] = {}
    for stream, (number, body) in enumerate(bodies.items(), 1):
        header = b"%d 0 " % number
        # the padding after the object is never parsed, only inflated ("0" is not whitespace: no scanning)
        packed = zlib.compress(header + body + b"\n" + b"0" * (inflate_mb << 20), 9)
        offsets[stream], holder[number] = out.tell(), stream
        out.write(
            b"%d 0 obj\n<< /Type /ObjStm /N 1 /First %d /Filter /FlateDecode /Length %d >>\nstream\n"
            % (stream, len(header), len(packed))
        )
        out.write(packed + b"\nendstream\nendobj\n")
    xref_number = max(bodies) + 1
    xref_at = out.tell()
    rows = []
    for number in range(xref_number + 1):
        if number in offsets:
            rows.append(struct.pack(">BIH", 1, offsets[number], 0))
        elif number in holder:
            rows.append(struct.pack(">BIH", 2, holder[number], 0))
        elif number == xref_number:
            rows.append(struct.pack(">BIH", 1, xref_at, 0))
        else:
            rows.append(struct.pack(">BIH", 0, 0, 0))
    table = zlib.compress(b"".join(rows))
    out.write(
        b"%d 0 obj\n<< /Type /XRef /Size %d /W [1 4 2] /Root 100 0 R /Filter /FlateDecode /Length %d >>\n"
        b"stream\n" % (xref_number, xref_number + 1, len(table))
    )
    out.write(table + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at)
    return out.getvalue()


@pytest.mark.skipif(not memory_limit_supported(), reason="the memory limit needs Linux (fork, RLIMIT_AS)")
def test_inspecting_a_pdf_of_inflating_streams_under_a_memory_limit_fails_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "inflating.pdf"
    path.write_bytes(inflating_pdf())
    assert path.stat().st_size < 500_000  # 420 MB once its streams are inflated
    assert run_limited(lambda: inspect_file(path), memory_mb=2048) == FileFacts(mime_type=PDF, page_count=4)
    with pytest.raises(MemoryLimitError, match="needed more than 128 MB of memory; it was not read"):
        run_limited(lambda: inspect_file(path), memory_mb=128)
