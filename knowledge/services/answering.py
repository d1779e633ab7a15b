"""Answering: retrieve the passages a caller may read, then answer from them with citations."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from knowledge.limits import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from knowledge.models import Chunk, Document
from knowledge.observability import instrumentation as observe
from knowledge.services import engines

if TYPE_CHECKING:
    from ingestion.highlight import Highlight
    from llm.types import Generation

EXTRACTIVE = "extractive"
GENERATIVE = "generative"
MODES = (EXTRACTIVE, GENERATIVE)

_NOTHING_FOUND = {
    "en": "No relevant document was found to answer this question.",
    "fr": "Aucun document pertinent n'a été trouvé pour répondre à cette question.",
    "de": "Es wurde kein relevantes Dokument gefunden, um diese Frage zu beantworten.",
}


@dataclass(frozen=True)
class Source:
    """A retrieved passage as the API and the pages show it."""

    id: int
    document_id: int
    title: str
    page: int | None
    score: float
    text: str
    highlight: str
    heading: str = ""
    #: the highlight as found (with its coverage), kept so that an extractive answer does not search again
    match: Highlight | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        del shown["match"]
        return shown


@dataclass(frozen=True)
class Answer:
    output: str
    sources: list[Source]
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    model: str
    mode: str
    #: False when nothing relevant was found and the answer says so
    grounded: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def meta(self) -> dict[str, Any]:
        return {
            "tokens_used": self.tokens_used,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "response_time": f"{self.seconds:.2f}s",
            "model": self.model,
        }


@dataclass(frozen=True)
class StreamPiece:
    """A piece of streamed text; the stream ends with the finished :class:`Answer`."""

    text: str
    #: tokens of the prompt the model was given (0: no model was called): what a stream cut short
    #: before its Answer still costs
    prompt_tokens: int = 0


def _language(text: str) -> str:
    from ingestion.highlight import _analyzer

    analyzer = _analyzer()
    return analyzer.detect(analyzer.words(text)) or "en"


def nothing_found_message(question: str) -> str:
    return _NOTHING_FOUND.get(_language(question), _NOTHING_FOUND["en"])


@observe.observe_retrieval
def sources_retrieve(*, question: str, collection_ids: Sequence[int], top_k: int) -> list[Source]:
    """The ``top_k`` best passages for ``question`` among the given collections, best first.

    The collection filter is applied inside the search, before ranking. Passages scoring under
    ``RAG_SCORE_THRESHOLD`` (cosine) are dropped.
    """
    from ingestion.highlight import highlight

    if not collection_ids:
        return []
    hits = engines.get_searcher().search(question, k=top_k, collections=set(collection_ids))
    rows = {
        chunk.pk: chunk
        for chunk in Chunk.objects.filter(
            pk__in=[hit.chunk_id for hit in hits],
            document__status=Document.Status.READY,
            document__collection_id__in=collection_ids,
        ).select_related("document")
    }
    sources: list[Source] = []
    for hit in hits:
        chunk = rows.get(hit.chunk_id)
        if chunk is None:  # deleted since the index was saved
            continue
        score = hit.dense_score if hit.dense_score is not None else 0.0
        if score < settings.RAG_SCORE_THRESHOLD:
            continue
        match = highlight(question, chunk.text)
        sources.append(
            Source(
                id=chunk.pk,
                document_id=chunk.document_id,
                title=chunk.document.title,
                page=chunk.page,
                score=round(float(score), 4),
                text=chunk.text,
                highlight=match.text,
                heading=chunk.heading,
                match=match,
            )
        )
    return sources


def _nothing_found(question: str, mode: str, started: float, model: str) -> Answer:
    return Answer(
        output=nothing_found_message(question),
        sources=[],
        prompt_tokens=0,
        completion_tokens=0,
        seconds=time.perf_counter() - started,
        model=model,
        mode=mode,
        grounded=False,
    )


def _extractive(question: str, sources: list[Source], started: float, retrieve_s: float) -> Answer:
    from ingestion.highlight import extractive_answer, highlight

    highlights = [s.match or highlight(question, s.text) for s in sources]
    return Answer(
        output=extractive_answer(highlights),
        sources=sources,
        prompt_tokens=0,
        completion_tokens=0,
        seconds=time.perf_counter() - started,
        model=EXTRACTIVE,
        mode=EXTRACTIVE,
        timings={"retrieve": retrieve_s},
    )


def _rag_messages(
    question: str, sources: list[Source], history: Sequence[tuple[str, str]], max_tokens: int
) -> tuple[list[dict[str, str]], list[Source]]:
    from ingestion.highlight import without_citation_markers
    from llm.prompts import PromptSource, build_rag_messages
    from llm.tokens import prompt_budget

    llm = engines.get_llm()
    # a source's own "[2]" would read to the model as source 2, and could be copied as a citation
    shown = [without_citation_markers(s.text) for s in sources]
    messages, used = build_rag_messages(
        question,
        [PromptSource(number=i + 1, title=s.title, page=s.page, text=shown[i]) for i, s in enumerate(sources)],
        history=history,
        count_tokens=llm.count_tokens,
        budget_tokens=prompt_budget(llm.context_window, max_tokens),
    )
    return messages, [sources[i] for i in used]


@observe.observe_answers("rag", answer_type=Answer)
def answer_question(
    *,
    question: str,
    collection_ids: Sequence[int],
    top_k: int,
    mode: str,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    history: Sequence[tuple[str, str]] = (),
) -> Answer:
    """Answer ``question`` from the passages of the given collections, citing them as [n]."""
    started = time.perf_counter()
    sources = sources_retrieve(question=question, collection_ids=collection_ids, top_k=top_k)
    retrieve_s = time.perf_counter() - started
    if not sources:
        return _nothing_found(
            question, mode, started, EXTRACTIVE if mode == EXTRACTIVE else engines.get_llm().model_name()
        )
    if mode == EXTRACTIVE:
        return _extractive(question, sources, started, retrieve_s)
    llm = engines.get_llm()
    messages, used = _rag_messages(question, sources, history, max_tokens)
    generation = llm.generate(messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    return _generated(generation, used, started, retrieve_s)


def _generated(generation: Generation, sources: list[Source], started: float, retrieve_s: float) -> Answer:
    return Answer(
        output=generation.text.strip(),
        sources=sources,
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        seconds=time.perf_counter() - started,
        model=generation.model,
        mode=GENERATIVE,
        timings={"retrieve": retrieve_s, "generate": time.perf_counter() - started - retrieve_s},
    )


@observe.observe_answers("rag", answer_type=Answer)
def answer_question_stream(
    *,
    question: str,
    collection_ids: Sequence[int],
    top_k: int,
    mode: str,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    history: Sequence[tuple[str, str]] = (),
) -> Iterator[StreamPiece | Answer]:
    """Like :func:`answer_question`, yielding the answer's text as it is generated, then the Answer."""
    started = time.perf_counter()
    sources = sources_retrieve(question=question, collection_ids=collection_ids, top_k=top_k)
    retrieve_s = time.perf_counter() - started
    if not sources or mode == EXTRACTIVE:
        answer = (
            _extractive(question, sources, started, retrieve_s)
            if sources
            else _nothing_found(
                question, mode, started, EXTRACTIVE if mode == EXTRACTIVE else engines.get_llm().model_name()
            )
        )
        yield StreamPiece(answer.output)
        yield answer
        return
    from llm.types import Generation

    llm = engines.get_llm()
    messages, used = _rag_messages(question, sources, history, max_tokens)
    stream = llm.stream(messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    try:
        prompt_tokens = llm.count_message_tokens(messages)
        for item in stream:
            if isinstance(item, Generation):
                yield _generated(item, used, started, retrieve_s)
            elif item:
                yield StreamPiece(item, prompt_tokens)
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()


@observe.observe_answers("generate", answer_type=Answer)
def text_generate(*, prompt: str, temperature: float, top_p: float, max_tokens: int) -> Answer:
    """Text from a prompt, no retrieval."""
    started = time.perf_counter()
    generation = engines.get_llm().generate(prompt, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    return Answer(
        output=generation.text,
        sources=[],
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        seconds=time.perf_counter() - started,
        model=generation.model,
        mode=GENERATIVE,
        grounded=False,
    )


@observe.observe_answers("generate", answer_type=Answer)
def text_generate_stream(
    *, prompt: str, temperature: float, top_p: float, max_tokens: int
) -> Iterator[StreamPiece | Answer]:
    """Like :func:`text_generate`, yielding text pieces, then the Answer."""
    from llm.prompts import build_generate_messages
    from llm.types import Generation

    started = time.perf_counter()
    llm = engines.get_llm()
    stream = llm.stream(prompt, temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    try:
        prompt_tokens = llm.count_message_tokens(build_generate_messages(prompt))
        for item in stream:
            if isinstance(item, Generation):
                yield Answer(
                    output=item.text,
                    sources=[],
                    prompt_tokens=item.prompt_tokens,
                    completion_tokens=item.completion_tokens,
                    seconds=time.perf_counter() - started,
                    model=item.model,
                    mode=GENERATIVE,
                    grounded=False,
                )
            elif item:
                yield StreamPiece(item, prompt_tokens)
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()
