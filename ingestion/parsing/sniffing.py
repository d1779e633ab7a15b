"""Deciding a file's type from its content, with the upload name's extension as a hint."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from ingestion.errors import UnsupportedFormatError

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV = "text/csv"
HTML = "text/html"
MARKDOWN = "text/markdown"
EML = "message/rfc822"
TEXT = "text/plain"

SUPPORTED_TYPES: dict[str, str] = {
    PDF: "PDF",
    DOCX: "DOCX",
    PPTX: "PPTX",
    XLSX: "XLSX",
    CSV: "CSV",
    HTML: "HTML",
    MARKDOWN: "Markdown",
    EML: "E-mail (EML)",
    TEXT: "Text",
}

#: extensions an upload form can offer, with the type each one stands for
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".pdf": PDF,
    ".docx": DOCX,
    ".pptx": PPTX,
    ".xlsx": XLSX,
    ".csv": CSV,
    ".tsv": CSV,
    ".html": HTML,
    ".htm": HTML,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".eml": EML,
    ".txt": TEXT,
}

_ALIASES = {
    "application/csv": CSV,
    "text/x-csv": CSV,
    "text/tab-separated-values": CSV,
    "application/xhtml+xml": HTML,
    "text/x-markdown": MARKDOWN,
    "application/x-email": EML,
}
_ZIP_PARTS = (("word/document.xml", DOCX), ("ppt/presentation.xml", PPTX), ("xl/workbook.xml", XLSX))
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_LEGACY_OFFICE = {
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/x-ole-storage",
    "application/cdfv2",
}
_EMAIL_HEADER = re.compile(
    r"^(from|to|cc|subject|date|mime-version|received|return-path|message-id|delivered-to|"
    r"reply-to|sender|x-[a-z0-9-]+|content-type|dkim-signature|arc-[a-z-]+|authentication-results)"
    r"\s*:",
    re.IGNORECASE,
)
_EMAIL_STRONG = ("from", "mime-version", "received", "return-path", "message-id", "delivered-to")
_HTML_START = re.compile(
    rb"^\s*(<\?xml[^>]*>\s*)?(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE | re.DOTALL
)
_HEAD_BYTES = 8192


def normalize_mime(mime_type: str) -> str:
    """Map a caller-supplied type (possibly an alias, maybe with parameters) to a supported one."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    mime = _ALIASES.get(mime, mime)
    if mime not in SUPPORTED_TYPES:
        raise UnsupportedFormatError(_unsupported(mime))
    return mime


def sniff_mime(path: Path, filename: str | None = None) -> str:
    """Return the supported MIME type of the file at ``path``.

    Content decides binary formats (a PDF named ``.txt`` is a PDF); for text files the
    extension of ``filename`` (the upload name, else the stored name) picks the flavour, with
    e-mail headers and an HTML start tag recognised when the extension says nothing.
    Raises UnsupportedFormatError naming what the file is and what is supported.
    """
    path = Path(path)
    ext = Path(filename or path.name).suffix.lower()
    with path.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    if not head:
        if ext in SUPPORTED_EXTENSIONS:
            return SUPPORTED_EXTENSIONS[ext]
        raise UnsupportedFormatError(_unsupported("an empty file"))

    detected = _libmagic(path)
    if _is_pdf(path, head):
        return PDF
    if detected == PDF:
        detected = None  # not a PDF after all (see _is_pdf): let the byte checks decide
    if detected in (DOCX, PPTX, XLSX):
        return detected
    if head.startswith(b"PK\x03\x04") or detected in ("application/zip", "application/x-zip-compressed"):
        return _office_in_zip(path, detected or "application/zip")
    if head.startswith(_OLE_MAGIC) or detected in _LEGACY_OFFICE or detected == "application/encrypted":
        if ext in (".docx", ".pptx", ".xlsx") or detected == "application/encrypted":
            raise UnsupportedFormatError(
                "Unsupported file type: a password-protected Office document. Remove the password and upload it again."
            )
        raise UnsupportedFormatError(
            _unsupported(
                f"a legacy Microsoft Office file ({ext or detected or 'OLE'})",
                hint=" Save it as DOCX, PPTX or XLSX and upload it again.",
            )
        )
    if _is_text(detected, head):
        return _text_flavour(detected, head, ext)
    raise UnsupportedFormatError(_unsupported(detected or "unknown binary data", ext=ext))


def _is_pdf(path: Path, head: bytes) -> bool:
    # libmagic says "PDF" for any file with "%PDF-" near the top, a text about PDFs included;
    # PDF readers accept junk before the header, so: the header first, or a header near the
    # top and the end-of-file marker near the end
    if head.startswith(b"%PDF-"):
        return True
    if b"%PDF-" not in head[:1024]:
        return False
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 2048))
        return b"%%EOF" in fh.read()


def _libmagic(path: Path) -> str | None:
    try:
        import magic
    except ImportError:
        # libmagic is a system library (libmagic1); without it the byte checks below still work
        return None
    try:
        return str(magic.from_file(str(path), mime=True)).lower()
    except Exception:  # a libmagic failure must not hide the byte checks
        return None


def _office_in_zip(path: Path, detected: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsupportedFormatError(_unsupported("a damaged ZIP archive")) from exc
    for part, mime in _ZIP_PARTS:
        if part in names:
            return mime
    raise UnsupportedFormatError(_unsupported("a ZIP archive" if detected.endswith("zip") else detected))


def _is_text(detected: str | None, head: bytes) -> bool:
    if detected is not None and (detected.startswith("text/") or detected in (EML, "application/csv")):
        return True
    if detected not in (None, "application/octet-stream"):
        return False
    # libmagic missing, or unsure (it calls some non-UTF-8 or UTF-16 text "data"): text has no
    # NUL bytes unless it is UTF-16/32 with a byte-order mark
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf")):
        return True
    if b"\x00" in head:
        return False
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls <= len(head) // 100


def _text_flavour(detected: str | None, head: bytes, ext: str) -> str:
    by_extension = SUPPORTED_EXTENSIONS.get(ext)
    if by_extension in (CSV, HTML, MARKDOWN, EML):
        return by_extension
    if _looks_like_email(head):
        return EML
    if _HTML_START.match(head):
        return HTML
    if by_extension is None and detected in (CSV, "application/csv"):
        return CSV
    return TEXT


def _looks_like_email(head: bytes) -> bool:
    text = head[:4096].decode("latin-1")
    lines = text.splitlines()[:30]
    if lines and lines[0].startswith("From "):
        lines = lines[1:]  # mbox separator line
    names: list[str] = []
    for line in lines:
        if not line.strip():
            break
        if line[0] in " \t":
            continue  # folded continuation of the previous header
        match = _EMAIL_HEADER.match(line)
        if match is None:
            return False
        names.append(match.group(1).lower())
    return len(names) >= 2 and any(name in _EMAIL_STRONG for name in names)


def _unsupported(what: str, *, ext: str = "", hint: str = "") -> str:
    if ext and ext not in what:
        what = f"{what} ({ext})"
    supported = ", ".join(dict.fromkeys(SUPPORTED_TYPES.values()))
    return f"Unsupported file type: {what}. Supported: {supported}.{hint}"
