"""Turning the bytes of a text file into str.

Order: byte-order mark → declared charset (HTML meta, MIME part) → strict UTF-8 → strict cp1252 →
charset-normalizer. Statistical guessers alone read short Western European files as cp1250 or
similar ("MoliÃ¨re", "kÃ¶nnen"); trying UTF-8 and then cp1252 strictly first avoids that, because
real UTF-8 almost never decodes by accident and cp1252 is what most non-UTF-8 Western files are.
"""

from __future__ import annotations

import codecs
import re

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Labels that browsers and mail clients read as windows-1252 anyway (WHATWG encoding standard);
# such a declaration is also often wrong about a file that is really UTF-8.
_WESTERN_LABELS = {
    "ascii",
    "us-ascii",
    "latin-1",
    "latin1",
    "iso-8859-1",
    "iso8859-1",
    "iso_8859-1",
    "l1",
    "cp1252",
    "windows-1252",
    "x-cp1252",
    "cp819",
}
_WESTERN_CODECS = {"cp1252"}
_HTML_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
# characters that stand for the bytes 0x80-0xBF (UTF-8 continuation bytes) when UTF-8 is misread
# as latin-1 (C1 controls) or cp1252 (the letters and punctuation cp1252 puts at 0x80-0x9F)
_CONT = (
    "[\u0080-\u00bf\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d"
    "\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178]"
)
_MOJIBAKE = re.compile(f"[\u00c2\u00c3]{_CONT}|\u00e2{_CONT}{{2}}|\u00f0{_CONT}{{3}}")
_MOJIBAKE_LEAD = re.compile("[\u00c2\u00c3\u00e2\u00f0]")
_XML_ENCODING = re.compile(rb"""^<\?xml[^>]+encoding\s*=\s*["']([a-zA-Z0-9_.:-]+)""")


def decode_bytes(data: bytes, declared: str | None = None) -> str:
    """Decode text bytes, trying the declared charset first and never failing.

    The result may contain U+FFFD only when no encoding at all reads the bytes cleanly.
    """
    for bom, bom_codec in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(bom_codec)
            except UnicodeDecodeError:
                break
    codec = _codec_name(declared)
    if codec is not None and codec not in _WESTERN_CODECS:
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return repair_mojibake(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = None
    if text is not None and (codec in _WESTERN_CODECS or _looks_western(text)):
        return text
    guessed = _guess(data)
    if guessed is not None:
        return guessed
    return text if text is not None else data.decode("utf-8", errors="replace")


def repair_mojibake(text: str) -> str:
    """Undo UTF-8 that was once decoded as Latin-1/cp1252 and saved again ("â€“" back to "–").

    Only sequences that start like Western mojibake (Â, Ã, â, ð) and re-encode to exactly one
    valid UTF-8 character are replaced, so real text such as "pâte" or »Fuß« is left alone.
    """
    if not _MOJIBAKE_LEAD.search(text):
        return text
    return _MOJIBAKE.sub(_unmojibake, text)


def _unmojibake(match: re.Match[str]) -> str:
    seq = match.group()
    raw = bytearray()
    for char in seq:
        try:
            raw += char.encode("cp1252")
        except UnicodeEncodeError:
            raw.append(ord(char))  # a C1 control: the latin-1 reading of a byte cp1252 leaves undefined
    try:
        fixed = raw.decode("utf-8")
    except UnicodeDecodeError:
        return seq
    return fixed if len(fixed) == 1 else seq


def html_declared_charset(data: bytes) -> str | None:
    """The charset named by an HTML ``<meta>`` or XML declaration near the top, if any."""
    head = data[:4096]
    match = _XML_ENCODING.search(head.lstrip()) or _HTML_CHARSET.search(head)
    return match.group(1).decode("ascii", errors="ignore") if match else None


def _codec_name(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if label in _WESTERN_LABELS:
        return "cp1252"
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def _looks_western(text: str) -> bool:
    # In Western European text accented letters are a minority; when most letters of a text of
    # some length land in Latin-1's accented range, the bytes were another script (cp1251
    # Cyrillic, cp1253 Greek...). A few words ("äöüß") prove nothing, and stay cp1252.
    letters = [c for c in text if c.isalpha()]
    if len(letters) < 20:
        return True
    accented = sum(1 for c in letters if "\u00c0" <= c <= "\u00ff")
    return accented / len(letters) < 0.5


def _guess(data: bytes) -> str | None:
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    return str(best) if best is not None else None
