"""Chunking, measured with the real e5 tokenizer."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest

from ingestion.chunking import ChunkingConfig, chunk_blocks, embedding_text, heading_line
from ingestion.embedding import Embedder
from ingestion.types import Block, ChunkDraft
from tests.ingestion.fixtures_engine import e5

FRENCH = (
    "Les classes Python permettent de regrouper des données et des fonctionnalités. "
    "Créer une nouvelle classe crée un nouveau type d'objet, ce qui permet d'en créer des instances. "
    "Chaque instance peut avoir ses propres attributs, qui définissent son état. "
)
ENGLISH = (
    "The installer checks the free disk space before copying any file. "
    "If the check fails, nothing is written and the previous version keeps running. "
    "Logs are kept in the var folder for thirty days. "
)
GERMAN = (
    "Der Rhein ist einer der längsten Flüsse Europas. Er fließt durch die Schweiz, Deutschland und die Niederlande. "
)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return e5()


def chunk(embedder: Embedder, blocks: list[Block], **config: object) -> list[ChunkDraft]:
    return chunk_blocks(
        blocks,
        count_tokens=embedder.count_tokens,
        config=ChunkingConfig(**config),  # type: ignore[arg-type]
        hard_limit=embedder.max_tokens,
    )


def mixed_document() -> list[Block]:
    blocks = [Block("User guide", 1, (), "heading"), Block("Installation", 1, ("User guide",), "heading")]
    for i in range(10):
        blocks.append(Block(ENGLISH * (1 + i % 4), 1 + i // 3, ("User guide", "Installation")))
    blocks.append(Block("Configuration", 4, ("User guide",), "heading"))
    for i in range(6):
        blocks.append(
            Block(f"| option_{i} | {i * 10} | valeur par défaut |", 4, ("User guide", "Configuration"), "table_row")
        )
    blocks.append(Block(FRENCH * 12, 5, ("User guide", "Configuration", "Détails en français")))
    blocks.append(Block(GERMAN * 20, 6, ("User guide", "Anhang")))
    blocks.append(Block("def main():\n    return 0\n" * 60, 7, ("User guide", "Code"), "code"))
    return blocks


@pytest.mark.parametrize("max_tokens", [350, 512, 120])
def test_chunks_never_exceed_the_limit_measured_with_the_e5_tokenizer(embedder: Embedder, max_tokens: int) -> None:
    chunks = chunk(embedder, mixed_document(), max_tokens=max_tokens)

    assert len(chunks) > 3
    for draft in chunks:
        counted = embedder.count_tokens(embedding_text(draft))
        assert counted == draft.token_count
        assert counted <= embedder.max_tokens
        # the target is a soft size: a few tokens over it at most, from tokenization at the joins
        assert counted <= max_tokens + 8
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_a_tight_hard_limit_is_never_exceeded(embedder: Embedder) -> None:
    chunks = chunk_blocks(
        mixed_document(),
        count_tokens=embedder.count_tokens,
        config=ChunkingConfig(max_tokens=350, overlap_tokens=10),
        hard_limit=48,
    )

    assert chunks
    assert max(embedder.count_tokens(embedding_text(c)) for c in chunks) <= 48


def test_page_and_heading_path_of_each_chunk_are_kept(embedder: Embedder) -> None:
    blocks = [
        Block("Manual", 1, (), "heading"),
        Block(ENGLISH, 1, ("Manual",)),
        Block(ENGLISH * 2, 2, ("Manual", "Setup")),
        Block(FRENCH * 2, 3, ("Manual", "Usage")),
    ]
    chunks = chunk(embedder, blocks, min_tokens=10)

    assert [(c.page, c.headings) for c in chunks] == [
        (1, ("Manual",)),
        (2, ("Manual", "Setup")),
        (3, ("Manual", "Usage")),
    ]
    assert chunks[0].text.startswith("Manual\n")  # the heading block is part of its section's text
    assert chunks[2].heading_path == "Manual > Usage"


def test_a_new_page_or_section_starts_a_new_chunk_unless_the_current_one_is_tiny(embedder: Embedder) -> None:
    blocks = [
        Block("Introduction", 1, (), "heading"),
        Block("Short intro.", 1, ("Introduction",)),
        Block(ENGLISH * 2, 2, ("Introduction",)),  # the first chunk is still tiny: it continues here
        Block(FRENCH, 3, ("Introduction",)),  # a new page: a new chunk
    ]
    chunks = chunk(embedder, blocks)

    assert len(chunks) == 2
    assert chunks[0].page == 1 and "Short intro." in chunks[0].text and ENGLISH.strip() in chunks[0].text
    assert chunks[1].page == 3 and chunks[1].text == FRENCH.strip()


def test_a_heading_block_opens_a_new_chunk_with_its_section(embedder: Embedder) -> None:
    blocks = [
        Block("Chapter 2", 1, (), "heading"),
        Block(ENGLISH * 2, 1, ("Chapter 2",)),
        Block("2.1 Details", 1, ("Chapter 2",), "heading"),  # the parser gives a heading its parents' path
        Block(FRENCH, 1, ("Chapter 2", "2.1 Details")),
    ]
    chunks = chunk(embedder, blocks)

    assert [c.headings for c in chunks] == [("Chapter 2",), ("Chapter 2", "2.1 Details")]
    assert chunks[1].text == "2.1 Details\n" + FRENCH.strip()


def test_consecutive_chunks_of_a_section_overlap(embedder: Embedder) -> None:
    sentences = [f"Sentence number {i} talks about topic {i * 7}." for i in range(120)]
    blocks = [Block(" ".join(sentences[i : i + 4]), 1, ("Long section",)) for i in range(0, 120, 4)]
    chunks = chunk(embedder, blocks, max_tokens=200, overlap_tokens=40)

    assert len(chunks) >= 4
    for previous, following in itertools.pairwise(chunks):
        first_sentence = re.match(r"[^.]*\.", following.text)
        assert first_sentence is not None
        # the next chunk opens with text that ends the previous one
        assert first_sentence.group(0) in previous.text
        assert previous.text.index(first_sentence.group(0)) > len(previous.text) // 2
    # every sentence is somewhere
    everything = " ".join(c.text for c in chunks)
    assert all(s in everything for s in sentences)


def test_no_overlap_across_sections(embedder: Embedder) -> None:
    blocks = [Block(ENGLISH * 3, 1, ("A",)), Block(FRENCH * 3, 1, ("B",))]
    chunks = chunk(embedder, blocks, overlap_tokens=40)

    assert [c.text for c in chunks] == [(ENGLISH * 3).strip(), (FRENCH * 3).strip()]


def test_a_giant_single_block_is_split_by_sentences_and_words(embedder: Embedder) -> None:
    words = [f"mot{i}" for i in range(6000)]  # no punctuation at all: must be cut by words
    giant = Block(" ".join(words), 9, ("Annexe",))
    chunks = chunk(embedder, [giant, Block(FRENCH * 40, 10, ("Annexe",))], overlap_tokens=0)

    assert len(chunks) > 10
    assert all(c.token_count <= 360 for c in chunks)
    word_chunks = [c for c in chunks if c.page == 9]
    assert " ".join(c.text for c in word_chunks).split() == words  # nothing lost, nothing repeated
    french = [c for c in chunks if c.page == 10]
    assert len(french) > 1
    assert all(c.text.endswith(".") for c in french)  # cut at sentence ends


def test_a_giant_word_is_split_by_characters(embedder: Embedder) -> None:
    blob = "QUJD" * 3000  # base64-like, a single "word"
    chunks = chunk(embedder, [Block(blob, 1, ())], overlap_tokens=0)

    assert len(chunks) > 1
    assert "".join(c.text for c in chunks) == blob
    assert all(c.token_count <= 360 for c in chunks)


def test_headings_are_embedded_but_the_chunk_text_stays_clean(embedder: Embedder) -> None:
    blocks = [Block(ENGLISH, 2, ("Guide", "Install"))]
    with_headings = chunk(embedder, blocks)[0]
    without = chunk(embedder, blocks, include_headings=False)[0]

    assert with_headings.text == without.text == ENGLISH.strip()
    assert embedding_text(with_headings) == "Guide > Install\n" + ENGLISH.strip()
    assert embedding_text(without, include_headings=False) == ENGLISH.strip()
    assert embedding_text(without, ChunkingConfig(include_headings=False)) == ENGLISH.strip()
    assert embedding_text(with_headings, ChunkingConfig()) == embedding_text(with_headings)
    assert with_headings.token_count == embedder.count_tokens("Guide > Install\n" + ENGLISH.strip())
    assert without.token_count == embedder.count_tokens(ENGLISH.strip())


def test_a_very_long_heading_path_is_cut_to_its_innermost_part() -> None:
    line = heading_line(["Part " + "x" * 300, "Chapter 2", "Section 2.1"])

    assert len(line) <= 200
    assert line.endswith("Chapter 2 > Section 2.1")


def test_empty_blocks_give_no_chunks(embedder: Embedder) -> None:
    assert chunk(embedder, [Block("   "), Block("")]) == []


def test_each_text_is_counted_about_once(embedder: Embedder) -> None:
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return embedder.count_tokens(text)

    blocks = [Block(ENGLISH, 1 + i // 20, ("Doc", f"Part {i // 10}")) for i in range(100)]
    chunks = chunk_blocks(blocks, count_tokens=counting, config=ChunkingConfig(), hard_limit=embedder.max_tokens)

    counted_chars = sum(len(t) for t in calls)
    text_chars = sum(len(b.text) for b in blocks)
    # blocks once, each finished chunk once more, plus headings and overlap tails
    assert counted_chars < 2.5 * text_chars
    assert len(calls) < len(blocks) + 4 * len(chunks) + 20


def test_works_with_any_counter() -> None:
    words: Callable[[str], int] = lambda text: len(text.split()) + 2  # noqa: E731
    blocks = [Block(" ".join(f"w{i}" for i in range(1000)), 1, ("H",))]
    chunks = chunk_blocks(
        blocks, count_tokens=words, config=ChunkingConfig(max_tokens=100, overlap_tokens=10), hard_limit=100
    )

    assert all(words(embedding_text(c)) <= 100 for c in chunks)
    assert chunks[1].text.split()[0] in chunks[0].text.split()[-12:]
