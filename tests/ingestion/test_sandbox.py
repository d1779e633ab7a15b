"""The memory-limited child that parses a file: hostile files fail with a reason, the worker lives on."""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import signal
import time
import zipfile
from functools import partial
from pathlib import Path
from types import FrameType

import pytest

from ingestion.errors import (
    DamagedDocumentError,
    DocumentTooLargeError,
    EncryptedDocumentError,
    IngestionError,
    MemoryLimitError,
)
from ingestion.parsing import parse_file
from ingestion.pipeline import PipelineOptions, prepare_file
from ingestion.sandbox import memory_limit_supported, run_limited, start_limited
from tests.ingestion.fixtures_engine import e5

pytestmark = pytest.mark.skipif(not memory_limit_supported(), reason="the memory limit needs Linux (fork, RLIMIT_AS)")

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
HAS_TESSERACT = shutil.which("tesseract") is not None


def _corpus(name: str) -> Path:
    path = CORPUS / name
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def _hog(step_mb: int = 16, total_mb: int = 8192) -> int:
    """Touch ever more memory, as a decompression bomb does, far past any limit of these tests."""
    held = [b"x" * (step_mb << 20) for _ in range(total_mb // step_mb)]
    return len(held)


def _docx_bomb(path: Path, unpacked_mb: int) -> Path:
    """A real DOCX whose single paragraph inflates to ``unpacked_mb`` MB from a few hundred kilobytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.'
            'wordprocessingml.document.main+xml"/></Types>',
        )
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            'officeDocument" Target="word/document.xml"/></Relationships>',
        )
        with archive.open("word/document.xml", "w") as member:
            member.write(
                b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/'
                b'2006/main"><w:body><w:p><w:r><w:t>'
            )
            block = b"A" * (1 << 20)
            for _ in range(unpacked_mb):
                member.write(block)
            member.write(b"</w:t></w:r></w:p></w:body></w:document>")
    return path


def test_work_that_needs_more_than_the_limit_fails_with_a_reason_and_the_parent_lives_on() -> None:
    limits_before = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(MemoryLimitError) as caught:
        run_limited(_hog, memory_mb=64)
    assert str(caught.value) == "Reading this document needed more than 64 MB of memory; it was not read"
    assert caught.value.code == "memory_limit"
    assert isinstance(caught.value, DocumentTooLargeError)  # callers that know the older error still match
    # this process is untouched: its own limit, and the next piece of work runs as usual
    assert resource.getrlimit(resource.RLIMIT_AS) == limits_before
    assert run_limited(lambda: "still here", memory_mb=64) == "still here"


def _reuse_freed_heap() -> int:
    parts = [bytearray(300) for _ in range(300_000)]  # ~100 MB, in heap the parent freed
    time.sleep(0.3)
    return len(parts)


def test_memory_the_parent_freed_but_kept_mapped_still_counts() -> None:
    # A long-lived worker keeps freed heap mapped: the child reuses it without a new mapping, so
    # the address-space cap alone would not see it; the watchdog counts the child's own pages.
    kept = [bytearray(200) for _ in range(500_000)]
    freed = [bytearray(200) for _ in range(1_500_000)]
    del freed
    with pytest.raises(MemoryLimitError, match="needed more than 32 MB of memory"):
        run_limited(_reuse_freed_heap, memory_mb=32)
    assert run_limited(_reuse_freed_heap, memory_mb=1024) == 300_000
    assert len(kept) == 500_000


def test_one_huge_allocation_past_the_limit_fails_the_same_way() -> None:
    with pytest.raises(MemoryLimitError, match="needed more than 128 MB of memory"):
        run_limited(lambda: bytearray(16 << 30), memory_mb=128)


def test_a_zip_bomb_dressed_as_docx_fails_on_memory_when_it_passes_the_size_check(tmp_path: Path) -> None:
    bomb = _docx_bomb(tmp_path / "bomb.docx", unpacked_mb=300)
    assert bomb.stat().st_size < 2_000_000
    options = PipelineOptions(ocr=False, max_unpacked_mb=1024, max_memory_mb=64)
    with pytest.raises(MemoryLimitError, match="needed more than 64 MB of memory; it was not read"):
        prepare_file(bomb, embedder=e5(), options=options)


@pytest.mark.parametrize(
    "name",
    ["pdf_reliance_3p.pdf", "docx_tables.docx", "xlsx_financial_segments.xlsx", "eml_with_attachment.eml"],
)
def test_a_parse_in_the_child_gives_what_the_parse_in_process_gives(name: str) -> None:
    path = _corpus(name)
    assert run_limited(partial(parse_file, path), memory_mb=2048) == parse_file(path)


def test_the_pipeline_parses_in_the_child_and_chunks_as_before(tmp_path: Path) -> None:
    path = _corpus("md_unstructured_readme.md")
    stages: list[str] = []
    limited = prepare_file(path, embedder=e5(), options=PipelineOptions(), progress=stages.append)
    unlimited = prepare_file(path, embedder=e5(), options=PipelineOptions(max_memory_mb=0))
    assert limited.parsed == unlimited.parsed == parse_file(path)
    assert limited.chunks == unlimited.chunks
    assert stages == ["parsing", "chunking"]


@pytest.mark.skipif(not HAS_TESSERACT, reason="Tesseract is not installed")
def test_ocr_runs_in_the_child() -> None:
    parsed = run_limited(partial(parse_file, _corpus("pdf_image_only_scan.pdf")), memory_mb=2048)
    assert parsed.ocr_pages == (1,)
    assert sum(len(block.text) for block in parsed.blocks) > 20


def test_an_ingestion_error_in_the_child_comes_back_with_its_type_and_message() -> None:
    with pytest.raises(EncryptedDocumentError, match=r"^The PDF is password-protected$"):
        run_limited(partial(parse_file, _corpus("pdf_encrypted_password.pdf")), memory_mb=2048)

    def damaged() -> None:
        raise DamagedDocumentError("The DOCX file is damaged and could not be read")

    with pytest.raises(DamagedDocumentError) as caught:
        run_limited(damaged, memory_mb=2048)
    assert caught.value.message == "The DOCX file is damaged and could not be read"
    assert caught.value.code == "damaged"


class _TwoArgumentError(IngestionError):
    """An error whose arguments differ from its message: pickle cannot rebuild it."""

    code = "two_arguments"

    def __init__(self, page: int, reason: str) -> None:
        super().__init__(f"Page {page}: {reason}")


def test_an_error_that_cannot_cross_the_pipe_keeps_its_message_and_code() -> None:
    def fail() -> None:
        raise _TwoArgumentError(3, "the page cannot be read")

    with pytest.raises(IngestionError) as caught:
        run_limited(fail, memory_mb=256)
    assert caught.value.message == "Page 3: the page cannot be read"
    assert caught.value.code == "two_arguments"


def test_a_bug_in_the_child_comes_back_as_itself_with_the_child_traceback() -> None:
    def buggy() -> None:
        {}["missing"]

    with pytest.raises(KeyError) as caught:
        run_limited(buggy, memory_mb=2048)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "memory-limited child process" in notes and "buggy" in notes


def test_a_child_killed_by_sigkill_is_reported_clearly() -> None:
    with pytest.raises(MemoryLimitError) as caught:
        run_limited(lambda: os.kill(os.getpid(), signal.SIGKILL), memory_mb=512)
    assert str(caught.value) == (
        "Reading this document stopped abruptly (SIGKILL), most likely because it needed more than 512 MB "
        "of memory; it was not read"
    )


def test_a_child_that_exits_on_its_own_is_a_failure_not_a_result() -> None:
    with pytest.raises(IngestionError, match=r"stopped unexpectedly \(exit status 3\)"):
        run_limited(lambda: os._exit(3), memory_mb=512)


def test_the_work_runs_in_another_process_unless_the_limit_is_zero() -> None:
    assert run_limited(os.getpid, memory_mb=256) != os.getpid()
    assert run_limited(os.getpid, memory_mb=0) == os.getpid()


def test_the_child_runs_no_exit_hooks_and_writes_nothing_to_stdout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "atexit-ran"

    def chatty() -> str:
        atexit.register(marker.write_text, "the parent's exit hooks ran in the child")
        print("noise from a parsing library")
        os.write(1, b"more noise on file descriptor 1\n")
        return "result"

    assert run_limited(chatty, memory_mb=256) == "result"
    captured = capfd.readouterr()
    assert "noise" not in captured.out  # a parent's stdout may be machine-read (ingest --json)
    assert "noise from a parsing library" in captured.err
    assert not marker.exists()


def test_a_large_result_comes_back_whole() -> None:
    text = run_limited(lambda: "é" * (20 << 20), memory_mb=1024)
    assert len(text) == 20 << 20 and set(text) == {"é"}


def test_an_interrupted_parent_takes_the_child_down(tmp_path: Path) -> None:
    """Celery's soft time limit raises in the parent while it waits: the child must not live on."""
    pid_file = tmp_path / "child.pid"

    class SoftTimeLimitExceeded(Exception):
        pass

    def slow() -> None:
        pid_file.write_text(str(os.getpid()))
        time.sleep(600)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if pid_file.exists() and pid_file.read_text():
            raise SoftTimeLimitExceeded()
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # the child has not started its work yet: later

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(SoftTimeLimitExceeded):
            run_limited(slow, memory_mb=256)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running or as a zombie
        os.kill(child, 0)


def test_started_work_runs_while_this_process_goes_on() -> None:
    started = time.perf_counter()
    pending = start_limited(lambda: (time.sleep(0.5), os.getpid())[1], memory_mb=256)
    assert time.perf_counter() - started < 0.4  # start_limited returned while the child sleeps
    child = pending.result()
    assert child != os.getpid()
    assert time.perf_counter() - started >= 0.5


def test_cancelled_work_leaves_no_child() -> None:
    pending = start_limited(lambda: time.sleep(30), memory_mb=256)
    pid = pending._pid
    assert pid is not None
    started = time.perf_counter()
    pending.cancel()
    assert time.perf_counter() - started < 5
    with pytest.raises(ChildProcessError):  # killed and reaped
        os.waitpid(pid, os.WNOHANG)
    pending.cancel()  # twice is harmless


def test_started_work_without_a_limit_runs_when_its_result_is_asked_for() -> None:
    ran: list[int] = []
    pending = start_limited(lambda: ran.append(os.getpid()) or "done", memory_mb=0)
    assert ran == []
    assert pending.result() == "done"
    assert ran == [os.getpid()]


def test_started_work_may_run_at_a_lower_priority() -> None:
    own = os.nice(0)
    assert start_limited(lambda: os.nice(0), memory_mb=256, niceness=19).result() == min(19, own + 19)
    assert start_limited(lambda: os.nice(0), memory_mb=256).result() == own
