"""Answering: retrieve the passages a caller may read, then answer from them with citations."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ParamSpec

from django.conf import settings

from knowledge.limits import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from knowledge.models import DOCUMENT_ANSWERING_STATUSES, Chunk
from knowledge.observability import instrumentation as observe
from knowledge.services import abstention, engines
from llm.types import FINISH_STOP, GenerationParams

if TYPE_CHECKING:
    from ingestion.highlight import Highlight

EXTRACTIVE = "extractive"
GENERATIVE = "generative"
MODES = (EXTRACTIVE, GENERATIVE)

logger = logging.getLogger(__name__)

P = ParamSpec("P")

#: the longest standalone question a model may write for a follow-up
_REWRITE_MAX_TOKENS = 96

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
    #: where the document lives outside the portal (a synced website page or bucket object); "" when nowhere
    origin_url: str = ""
    #: the highlight as found (with its coverage), kept so that an extractive answer does not search again
    match: Highlight | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        del shown["match"]
        return shown


@dataclass(frozen=True)
class Answer:
    """A finished answer: its text, the sources it was given, what it cost and why it ended."""

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
    #: as the model reported it: FINISH_STOP (the answer ended, or a stop string came) or FINISH_LENGTH
    #: (``max_tokens`` reached); an answer no model wrote ends with FINISH_STOP
    finish_reason: str = FINISH_STOP
    #: False when no passage answers the question: the output says so, ``sources`` is empty and
    #: ``related`` holds the closest passages, which are not an answer
    answered: bool = True
    related: list[Source] = field(default_factory=list)

    @property
    def tokens_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_record(self) -> dict[str, Any]:
        """The answer as plain JSON values (for a task's result); :meth:`from_record` reads it back."""
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        record["sources"] = [source.as_dict() for source in self.sources]
        record["related"] = [source.as_dict() for source in self.related]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Answer:
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        fields["sources"] = [Source(**source) for source in record.get("sources", ())]
        fields["related"] = [Source(**source) for source in record.get("related", ())]
        return cls(**fields)


@dataclass(frozen=True)
class StreamPiece:
    """A piece of streamed text; the stream ends with the finished :class:`Answer`."""

    text: str
    #: tokens of the prompt the model was given (0: no model was called): what a stream cut short
    #: before its Answer still costs
    prompt_tokens: int = 0


#: what an answer path yields: text pieces, then one Answer
AnswerEvents = Generator[StreamPiece | Answer, None, None]


def answer_of(events: Iterator[StreamPiece | Answer]) -> Answer:
    """Run an answer path's events to their end and return the Answer (the non-streamed call)."""
    answer: Answer | None = None
    for item in events:
        if isinstance(item, Answer):
            answer = item
    if answer is None:
        raise RuntimeError("the answer stream ended without an Answer")
    return answer


def _drained(stream: Callable[P, AnswerEvents]) -> Callable[P, Answer]:
    """The plain call of an answer path: the stream's own arguments, its events run to their end."""

    def drained(*args: P.args, **kwargs: P.kwargs) -> Answer:
        return answer_of(stream(*args, **kwargs))

    return drained


def _language(text: str) -> str:
    from ingestion.highlight import _analyzer

    analyzer = _analyzer()
    return analyzer.detect(analyzer.words(text)) or "en"


def nothing_found_message(question: str) -> str:
    return _NOTHING_FOUND.get(_language(question), _NOTHING_FOUND["en"])


@observe.observe_retrieval
def sources_retrieve(
    *,
    question: str,
    collection_ids: Sequence[int],
    top_k: int,
    min_score: float | None = None,
    asked: str | None = None,
) -> list[Source]:
    """The ``top_k`` best passages for ``question`` among the given collections, best first.

    The collection filter is applied inside the search, before ranking. Passages scoring under
    ``min_score`` (cosine; None: ``RAG_SCORE_THRESHOLD``) are dropped. Each passage's highlight
    answers ``asked`` (None: ``question``): a follow-up is searched with what it refers to, but
    its own words say which sentence answers it.
    """
    from ingestion.highlight import highlight

    threshold = settings.RAG_SCORE_THRESHOLD if min_score is None else min_score

    if not collection_ids:
        return []
    hits = engines.get_searcher().search(question, k=top_k, collections=set(collection_ids))
    rows = {
        chunk.pk: chunk
        for chunk in Chunk.objects.filter(
            pk__in=[hit.chunk_id for hit in hits],
            document__status__in=DOCUMENT_ANSWERING_STATUSES,
            document__collection_id__in=collection_ids,
        ).select_related("document")
    }
    sources: list[Source] = []
    for hit in hits:
        chunk = rows.get(hit.chunk_id)
        if chunk is None:  # deleted since the index was saved
            continue
        score = hit.dense_score if hit.dense_score is not None else 0.0
        if score < threshold:
            continue
        match = highlight(asked or question, chunk.text)
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
                origin_url=chunk.document.origin_url,
                match=match,
            )
        )
    return sources


def search_text(question: str, history: Sequence[tuple[str, str]]) -> str:
    """What to search with: ``question``, or, for a follow-up that leans on the conversation ``history``
    ("and when was it founded?"), the question with what it refers to.

    ``RAG_QUERY_REWRITE``: ``terms`` adds the salient terms of the previous turns
    (:func:`ingestion.followup.contextual_query`, no model); ``model`` asks the configured model for a
    standalone question (falling back to ``terms`` when it fails); ``auto`` is ``model`` with a remote
    model (``RAG_LLM_BACKEND=openai``) and ``terms`` with the small packaged one; ``off`` searches the
    question as it is.
    """
    from ingestion.followup import contextual_query, rewrite_messages, rewrite_parse
    from llm.errors import LLMError

    how = settings.RAG_QUERY_REWRITE
    if not history or how == "off":
        return question
    if how == "model" or (how == "auto" and settings.RAG_LLM_BACKEND == "openai"):
        try:
            reply = engines.get_llm().generate(
                rewrite_messages(question, history), temperature=0.0, max_tokens=_REWRITE_MAX_TOKENS
            )
            return rewrite_parse(reply.text, question)
        except LLMError as exc:
            logger.warning("The follow-up could not be rewritten by the model (%s): searching with terms", exc)
    return contextual_query(question, history)


def _nothing_found(question: str, mode: str, started: float, model: str, related: list[Source]) -> Answer:
    """The answer to a question no passage answers: it says so, and lists the closest passages apart."""
    return Answer(
        output=nothing_found_message(question),
        sources=[],
        prompt_tokens=0,
        completion_tokens=0,
        seconds=time.perf_counter() - started,
        model=model,
        mode=mode,
        grounded=False,
        answered=False,
        related=related,
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


def _written(answer: Answer, stop: Sequence[str]) -> AnswerEvents:
    """The events of an answer no model wrote: its text (cut before a stop string) in one piece, then it."""
    from llm.backends.base import StopScanner

    scanner = StopScanner(stop)
    output = scanner.feed(answer.output) + scanner.flush()
    answer = replace(answer, output=output)
    yield StreamPiece(output)
    yield answer


def _rag_messages(
    question: str, sources: list[Source], history: Sequence[tuple[str, str]], max_tokens: int
) -> tuple[list[dict[str, str]], list[Source]]:
    from ingestion.excerpt import excerpt
    from ingestion.highlight import without_citation_markers
    from llm.prompts import PromptSource, build_rag_messages
    from llm.tokens import prompt_budget

    llm = engines.get_llm()
    # the model reads the whole prompt before it writes: each source shows what answers, not its whole chunk
    per_source = settings.RAG_PROMPT_SOURCE_TOKENS
    texts = [excerpt(question, s.text, budget_tokens=per_source, count_tokens=llm.count_tokens) for s in sources]
    # a source's own "[2]" would read to the model as source 2, and could be copied as a citation
    shown = [without_citation_markers(text) for text in texts]
    messages, used = build_rag_messages(
        question,
        [PromptSource(number=i + 1, title=s.title, page=s.page, text=shown[i]) for i, s in enumerate(sources)],
        history=history,
        count_tokens=llm.count_tokens,
        budget_tokens=prompt_budget(llm.context_window, max_tokens),
    )
    return messages, [sources[i] for i in used]


def _generated(
    messages: list[dict[str, str]],
    sampling: GenerationParams,
    *,
    sources: list[Source],
    started: float,
    retrieve_s: float | None,
) -> AnswerEvents:
    """The model's text pieces as they come, then the Answer with the model's counts and finish reason.

    ``retrieve_s`` None: plain generation (no retrieval), whose text is kept as generated; a grounded
    answer is stripped of the whitespace around it. Closing the events stops the model.
    """
    from llm.text import citations_clean
    from llm.types import Generation

    llm = engines.get_llm()
    stream = llm.stream(
        messages,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        stop=sampling.stop,
    )
    try:
        prompt_tokens = llm.count_message_tokens(messages)
        for item in stream:
            if not isinstance(item, Generation):
                if item:
                    yield StreamPiece(item, prompt_tokens)
                continue
            seconds = time.perf_counter() - started
            yield Answer(
                # a grounded answer cites [n] only for sources it was given
                output=item.text if retrieve_s is None else citations_clean(item.text.strip(), len(sources)),
                sources=sources,
                prompt_tokens=item.prompt_tokens,
                completion_tokens=item.completion_tokens,
                seconds=seconds,
                model=item.model,
                mode=GENERATIVE,
                grounded=retrieve_s is not None,
                timings={} if retrieve_s is None else {"retrieve": retrieve_s, "generate": seconds - retrieve_s},
                finish_reason=item.finish_reason,
            )
    finally:
        stream.close()


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
    stop: Sequence[str] = (),
) -> AnswerEvents:
    """Answer ``question`` from the passages of the given collections, citing them as [n].

    Yields the answer's text as it is written, then the :class:`Answer`; the answer ends before the
    first of the ``stop`` strings. Retrieval happens on the first ``next()``; closing the events stops
    the model.
    """
    started = time.perf_counter()
    searched = search_text(question, history)
    passages = sources_retrieve(
        question=searched, collection_ids=collection_ids, top_k=top_k, min_score=-math.inf, asked=question
    )
    retrieve_s = time.perf_counter() - started
    sources = [passage for passage in passages if passage.score >= settings.RAG_SCORE_THRESHOLD]
    if not abstention.passages_answer(question, sources, collection_ids):
        model = EXTRACTIVE if mode == EXTRACTIVE else engines.get_llm().model_name()
        yield from _written(_nothing_found(question, mode, started, model, passages), stop)
        return
    if mode == EXTRACTIVE:
        yield from _written(_extractive(question, sources, started, retrieve_s), stop)
        return
    messages, used = _rag_messages(question, sources, history, max_tokens)
    sampling = GenerationParams(temperature, top_p, max_tokens, tuple(stop))
    yield from _generated(messages, sampling, sources=used, started=started, retrieve_s=retrieve_s)


#: :func:`answer_question_stream` run to its end: the :class:`Answer`
answer_question = _drained(answer_question_stream)


@observe.observe_answers("generate", answer_type=Answer)
def text_generate_stream(
    *, prompt: str, temperature: float, top_p: float, max_tokens: int, stop: Sequence[str] = ()
) -> AnswerEvents:
    """Text from a prompt, no retrieval: the pieces as they come, then the :class:`Answer`."""
    from llm.prompts import build_generate_messages

    started = time.perf_counter()
    messages = build_generate_messages(prompt)
    sampling = GenerationParams(temperature, top_p, max_tokens, tuple(stop))
    yield from _generated(messages, sampling, sources=[], started=started, retrieve_s=None)


#: :func:`text_generate_stream` run to its end: the :class:`Answer`
text_generate = _drained(text_generate_stream)
