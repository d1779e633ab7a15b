"""Ingestion throughput, end to end, against the raw embedding throughput of the same chunks.

    .venv/bin/python bench/bench_ingest.py [FOLDER] [--runs 3]
    .venv/bin/python bench/bench_ingest.py --pdf-pages 2000 [--runs 3]

With ``--pdf-pages N``, FOLDER is replaced by a generated set of text PDFs of N pages in all (files of
``--pages-per-file`` pages, each page about 350 words of real prose: SciFact abstracts read from
../shared/eval, never copied into the repository), as a company's reports would be.

Each run ingests every file of FOLDER (default ../shared/corpus) into a fresh database and index
through the product's own pipeline (``manage.py ingest --sync`` does the same), then embeds the
resulting chunk texts once more with the bare embedder. Prints pages/s, chunks/s, the time per
stage, and the pipeline's throughput as a ratio of the raw embedding throughput (median of runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup(var_dir: Path) -> None:
    os.environ["VAR_DIR"] = str(var_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for name in (
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "INDEX_DIR",
        "MEDIA_ROOT",
        "RAG_EMBED_CACHE_DIR",
    ):
        os.environ.pop(name, None)  # a private SQLite database and index under var_dir, no embedding cache
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _one_run(folder: Path, raw_sample: int) -> dict[str, float]:
    from django.core.files import File

    from knowledge.models import Chunk, Document
    from knowledge.services import documents as document_services
    from knowledge.services import engines

    Chunk.objects.all().delete()
    Document.objects.all().delete()
    engines.reset()
    embedder = engines.get_embedder()
    from ingestion.embedding import passage_embeddings

    passage_embeddings(embedder, ["warm-up"])  # the model's load time is not ingestion time

    stages = {"parse": 0.0, "chunk": 0.0, "embed": 0.0, "index": 0.0}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in {".json"})
    started = time.perf_counter()
    for path in files:
        with path.open("rb") as handle:
            document = document_services.document_create(file=File(handle), filename=path.name, dispatch=False)
        outcome = document_services.document_process(document_id=document.pk)
        for stage, seconds in outcome.timings.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    total = time.perf_counter() - started

    ready = Document.objects.filter(status=Document.Status.READY)
    pages = sum(d.page_count or 1 for d in ready)
    chunks = list(Chunk.objects.filter(document__in=ready).order_by("document_id", "ordinal"))
    from ingestion.chunking import embedding_text

    config = engines.chunking_config()
    embedded = [(embedding_text(document_services.chunk_draft(c), config), c.token_count) for c in chunks]
    if 0 < raw_sample < len(embedded):  # a run of consecutive chunks: whole pages, with their mix of lengths
        first = (len(embedded) - raw_sample) // 2
        embedded = embedded[first : first + raw_sample]
    raw_started = time.perf_counter()
    for start in range(0, len(embedded), 64):
        passage_embeddings(embedder, [text for text, _ in embedded[start : start + 64]])  # as ingestion embeds
    # scaled to all the chunks by their tokens (the embedding time grows with them), not by their number
    tokens = sum(c.token_count for c in chunks)
    raw = (time.perf_counter() - raw_started) * tokens / max(1, sum(count for _, count in embedded))
    return {
        "files": len(files),
        "ready": ready.count(),
        "pages": pages,
        "chunks": len(chunks),
        "seconds": total,
        "pages_per_s": pages / total,
        "chunks_per_s": len(chunks) / total,
        "raw_embed_chunks_per_s": len(chunks) / raw,
        "ratio_to_raw_embedding": raw / total,  # the same chunks: the ratio of the two throughputs
        "embed_share": stages["embed"] / total,
        **{f"{stage}_s": seconds for stage, seconds in stages.items()},
    }


def generate_pdfs(folder: Path, pages: int, pages_per_file: int, source: Path) -> Path:
    """Write text PDFs of ``pages`` pages in all into ``folder``; the prose comes from a BEIR corpus file."""
    from fpdf import FPDF

    texts: list[str] = []
    with source.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            texts.append(f"{record.get('title', '')}. {record.get('text', '')}")
            if len(texts) >= pages * 3:
                break
    # the core fonts know Latin-1 only
    texts = [t.encode("latin-1", "replace").decode("latin-1") for t in texts]
    folder.mkdir(parents=True, exist_ok=True)
    position = 0
    for file_number in range(0, pages, pages_per_file):
        pdf = FPDF(format="A4")
        pdf.set_auto_page_break(auto=False)
        pdf.set_font("Helvetica", size=10)
        for page in range(min(pages_per_file, pages - file_number)):
            pdf.add_page()
            pdf.set_font("Helvetica", style="B", size=13)
            pdf.cell(
                0, 10, f"Report {file_number // pages_per_file + 1}, section {page + 1}", new_x="LMARGIN", new_y="NEXT"
            )
            pdf.set_font("Helvetica", size=10)
            words = 0
            while words < 350:  # about one printed page
                text = texts[position % len(texts)]
                position += 1
                pdf.multi_cell(0, 5, text, new_x="LMARGIN", new_y="NEXT")
                pdf.ln(2)
                words += len(text.split())
                if pdf.get_y() > 270:
                    break
        pdf.output(str(folder / f"report-{file_number // pages_per_file + 1:03d}.pdf"))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(REPO.parent / "shared" / "corpus"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pdf-pages", type=int, default=0, help="ingest N generated text-PDF pages instead")
    parser.add_argument("--pages-per-file", type=int, default=100, help="pages per generated PDF (default 100)")
    parser.add_argument(
        "--raw-sample",
        type=int,
        default=0,
        help="embed only N consecutive chunks from the middle for the raw throughput (default 0: all of them)",
    )
    parser.add_argument(
        "--prose", default=str(REPO.parent / "shared" / "eval" / "scifact-dev" / "corpus.jsonl"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kp-bench-") as var_dir:
        folder = Path(args.folder)
        if args.pdf_pages > 0:
            folder = generate_pdfs(Path(var_dir) / "pdfs", args.pdf_pages, args.pages_per_file, Path(args.prose))
            args.folder = f"{args.pdf_pages} generated text-PDF pages ({args.pages_per_file} per file)"
        _setup(Path(var_dir))
        runs = []
        for number in range(1, args.runs + 1):
            runs.append(_one_run(folder, args.raw_sample))
            figures = runs[-1]
            print(
                f"run {number}: {figures['seconds']:.1f} s, pages/s {figures['pages_per_s']:.2f}, "
                f"chunks/s {figures['chunks_per_s']:.2f}, raw embedding chunks/s "
                f"{figures['raw_embed_chunks_per_s']:.2f}, pipeline/raw {figures['ratio_to_raw_embedding']:.2f}; "
                + ", ".join(f"{stage} {figures[f'{stage}_s']:.1f} s" for stage in ("parse", "chunk", "embed", "index")),
                flush=True,
            )
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(f"Ingestion of {args.folder}: median of {len(runs)} run(s)")
    print(
        f"  files {median['files']:.0f}, ready {median['ready']:.0f}, pages {median['pages']:.0f}, "
        f"chunks {median['chunks']:.0f}, {median['seconds']:.1f} s"
    )
    print(
        f"  pages/s {median['pages_per_s']:.2f}   chunks/s {median['chunks_per_s']:.2f}   "
        f"raw embedding chunks/s {median['raw_embed_chunks_per_s']:.2f}   "
        f"pipeline/raw {median['ratio_to_raw_embedding']:.2f}"
    )
    stages = "   ".join(f"{stage} {median[f'{stage}_s']:.1f} s" for stage in ("parse", "chunk", "embed", "index"))
    print(f"  stages: {stages}   (embedding {median['embed_share']:.0%} of the time)")
    print(json.dumps({key: round(value, 4) for key, value in median.items()}))


if __name__ == "__main__":
    main()
