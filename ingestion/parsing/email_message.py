"""E-mail (.eml): headers, the text body, and the attachments that carry text."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path

from ingestion.errors import IngestionError
from ingestion.parsing.encoding import decode_bytes
from ingestion.parsing.html_page import parse_html_text
from ingestion.parsing.plain_text import parse_plain_text
from ingestion.parsing.text import squash
from ingestion.types import Block, ParsedDocument

MIME_TYPE = "message/rfc822"

#: parses one attachment saved to a file: (path, original filename) -> document
AttachmentParser = Callable[[Path, str], ParsedDocument]

_HEADERS = ("Subject", "From", "To", "Cc", "Date")
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


def parse_email(path: Path, *, parse_attachment: AttachmentParser | None) -> ParsedDocument:
    """Read an e-mail: a header block, the body (text/plain preferred, else HTML), then attachments.

    ``parse_attachment`` reads an attachment by its own type; None skips every attachment
    (used to stop e-mails nested in e-mails from going deeper).
    """
    with Path(path).open("rb") as fh:
        message = BytesParser(policy=policy.default).parse(fh)
    subject = squash(_header(message, "Subject"))
    blocks: list[Block] = []
    header_lines = [f"{name}: {value}" for name in _HEADERS if (value := squash(_header(message, name)))]
    if header_lines:
        blocks.append(Block(text="\n".join(header_lines)))

    body = message.get_body(preferencelist=("plain", "html")) if isinstance(message, EmailMessage) else None
    if body is not None:
        blocks.extend(_body_blocks(body))

    warnings: list[str] = []
    for part in _leaf_parts(message):
        if part is body:
            continue
        name = part.get_filename()
        is_message = part.get_content_type() == "message/rfc822"
        if not name and not is_message and not part.is_attachment():
            continue  # the other alternative of the body, or an inline part of it
        if part.get_content_maintype() == "image" and part.get_content_disposition() != "attachment":
            continue  # pictures of a signature or a newsletter layout
        label = squash(name or "") or (_attached_subject(part) if is_message else "attachment")
        if parse_attachment is None:
            warnings.append(f"Attachment '{label}' was skipped: attachments nested this deep are not read.")
            continue
        try:
            parsed = _parse_part(part, label, is_message, parse_attachment)
        except IngestionError as exc:
            warnings.append(f"Attachment '{label}' was skipped: {exc.message}")
            continue
        blocks.extend(
            Block(text=b.text, page=b.page, headings=(label, *b.headings), kind=b.kind) for b in parsed.blocks
        )
        warnings.extend(f"Attachment '{label}': {warning}" for warning in parsed.warnings)
    return ParsedDocument(blocks=tuple(blocks), mime_type=MIME_TYPE, title=subject or None, warnings=tuple(warnings))


def _header(message: Message, name: str) -> str:
    try:
        value = message.get(name)
    except Exception:  # a malformed header must not lose the whole message
        return ""
    return str(value) if value is not None else ""


def _attached_subject(part: Message) -> str:
    inner = part.get_payload(0) if part.is_multipart() else None
    subject = squash(_header(inner, "Subject")) if isinstance(inner, Message) else ""
    return f"Attached message: {subject}" if subject else "attached message"


def _body_blocks(part: Message) -> tuple[Block, ...]:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ()
    text = decode_bytes(payload, part.get_content_charset())
    if part.get_content_subtype() == "html":
        return parse_html_text(text).blocks
    return parse_plain_text(text).blocks


def _leaf_parts(part: Message) -> Iterator[EmailMessage]:
    """Every non-multipart part; an attached e-mail is one part, not opened here."""
    if part.is_multipart() and part.get_content_maintype() == "multipart":
        for sub in part.get_payload():
            if isinstance(sub, Message):
                yield from _leaf_parts(sub)
    elif isinstance(part, EmailMessage):  # always, with policy.default
        yield part


def _parse_part(part: Message, label: str, is_message: bool, parse_attachment: AttachmentParser) -> ParsedDocument:
    if is_message:
        inner = part.get_payload(0) if part.is_multipart() else part.get_payload()
        data = inner.as_bytes() if isinstance(inner, Message) else b""
        filename = label if label.lower().endswith(".eml") else f"{label}.eml"
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = label
    suffix = Path(filename).suffix
    with tempfile.TemporaryDirectory(prefix="kp-attachment-") as folder:
        target = Path(folder) / f"attachment{suffix if _SAFE_SUFFIX.match(suffix) else ''}"
        target.write_bytes(data)
        return parse_attachment(target, filename)
