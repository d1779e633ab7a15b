"""One API question, run the same way inline, streamed, or on a worker ("async": true)."""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from django.db import transaction

from knowledge import task_dispatch
from knowledge.models import ApiKey, ApiTask
from knowledge.services import access, answering, usage

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

RAG = "rag"
GENERATE = "generate"
#: the OpenAI-compatible chat face: a grounded answer like RAG, recorded apart in the usage
CHAT = "openai-chat"
_RETRIEVAL = frozenset({RAG, CHAT})

FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class QuestionRequest:
    """A validated request to /rag/, /generate/ or the chat face (see the serializers).

    ``history`` holds the earlier ``(question, answer)`` turns of a conversation; the answer is cut
    before the first of the ``stop`` strings.
    """

    endpoint: str
    prompt: str
    temperature: float
    top_p: float
    max_tokens: int
    user_id: str = ""
    top_k: int = 5
    collection: str | None = None
    mode: str = answering.EXTRACTIVE
    history: tuple[tuple[str, str], ...] = ()
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # JSON (the async path's task arguments) turns tuples into lists: make them tuples again.
        object.__setattr__(self, "history", tuple((str(q), str(a)) for q, a in self.history))
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @classmethod
    def from_validated(cls, endpoint: str, data: dict[str, Any]) -> QuestionRequest:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(endpoint=endpoint, **fields)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def response_body(request: QuestionRequest, answer: answering.Answer) -> dict[str, Any]:
    body: dict[str, Any] = {"output": answer.output}
    if request.endpoint in _RETRIEVAL:
        body["sources"] = sources_body(answer)
    body["meta"] = answer.meta()
    return body


def sources_body(answer: answering.Answer) -> list[dict[str, Any]]:
    """The answer's sources as the API shows them."""
    return [{key: value for key, value in source.as_dict().items() if key != "heading"} for source in answer.sources]


def _prepare(request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None) -> list[int]:
    usage.quota_check(user=user, end_user_id=request.user_id)
    if request.endpoint in _RETRIEVAL:
        return access.collection_ids_for(user=user, api_key=api_key, slug=request.collection)
    return []


def _record(request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None, answer: answering.Answer) -> None:
    usage.usage_record(
        user=user,
        api_key=api_key,
        end_user_id=request.user_id,
        endpoint=request.endpoint,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
    )


def _answer(request: QuestionRequest, collection_ids: list[int]) -> answering.Answer:
    if request.endpoint in _RETRIEVAL:
        return answering.answer_question(
            question=request.prompt,
            collection_ids=collection_ids,
            top_k=request.top_k,
            mode=request.mode,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            history=request.history,
        )
    return answering.text_generate(
        prompt=request.prompt,
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_tokens,
    )


def _pieces(request: QuestionRequest, collection_ids: list[int]) -> Iterator[answering.StreamPiece | answering.Answer]:
    if request.endpoint in _RETRIEVAL:
        return answering.answer_question_stream(
            question=request.prompt,
            collection_ids=collection_ids,
            top_k=request.top_k,
            mode=request.mode,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            history=request.history,
        )
    return answering.text_generate_stream(
        prompt=request.prompt, temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens
    )


def question_answer(
    *, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None
) -> dict[str, Any]:
    """Run the request and return the response body; usage is recorded, the quota checked first."""
    return response_body(request, question_complete(request=request, user=user, api_key=api_key).answer)


def question_stream(
    *, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream events: ("token", {"text"}) while generating, then ("done", body).

    Permission and quota errors are raised before the first event, so they become plain JSON errors.
    """
    items = question_complete_stream(request=request, user=user, api_key=api_key)

    def events() -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            for item in items:
                if isinstance(item, Completion):
                    yield "done", response_body(request, item.answer)
                else:
                    yield "token", {"text": item.text}
        finally:
            items.close()  # a client that went away: the answer is charged and the model stops now

    return events()


@dataclass(frozen=True)
class Completion:
    """A finished answer, cut before the first stop string, and why it ended."""

    answer: answering.Answer
    #: FINISH_STOP (the answer ended or a stop string came) or FINISH_LENGTH (``max_tokens`` reached)
    finish_reason: str


def _finish_reason(request: QuestionRequest, answer: answering.Answer, cut: bool) -> str:
    # The answer does not say why generation ended; a generation that used every allowed token
    # was, but for a coincidence on the last token, cut by max_tokens.
    if not cut and answer.mode == answering.GENERATIVE and answer.completion_tokens >= request.max_tokens:
        return FINISH_LENGTH
    return FINISH_STOP


def question_complete(*, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None) -> Completion:
    """Run the request: the answer (cut at ``request.stop``) and its finish reason; usage is recorded."""
    collection_ids = _prepare(request, user, api_key)
    answer = _answer(request, collection_ids)
    _record(request, user, api_key, answer)
    output, cut = stop_cut(answer.output, request.stop)
    return Completion(replace(answer, output=output), _finish_reason(request, answer, cut))


def question_complete_stream(
    *, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None
) -> Generator[answering.StreamPiece | Completion, None, None]:
    """Like :func:`question_complete`, yielding text pieces as they come, then the ``Completion``.

    Permission, quota, model and prompt errors are raised here, before the first item, so that a
    caller can still answer them as plain errors. The pieces join to the completion's output (but
    for the whitespace around a generated answer, which the completion's output has not).

    Usage is recorded once however the stream ends: the answer's counts when it finishes; the prompt
    and the text sent so far when it is closed early (the client went away) or fails. Closing the
    iterator stops the model.
    """
    collection_ids = _prepare(request, user, api_key)
    pieces = _pieces(request, collection_ids)
    first = next(pieces)  # retrieval and model loading happen here, before the response starts
    charge = usage.StreamCharge(user=user, api_key=api_key, end_user_id=request.user_id, endpoint=request.endpoint)

    def items() -> Generator[answering.StreamPiece | Completion, None, None]:
        stops = StopFilter(request.stop)
        try:
            for item in _chain(first, pieces):
                if isinstance(item, answering.Answer):
                    charge.finished(prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens)
                    if tail := stops.flush():
                        yield answering.StreamPiece(tail)
                    # the answer's own text (generated text is stripped) rather than the pieces joined
                    output, cut = stop_cut(item.output, request.stop)
                    yield Completion(replace(item, output=output), _finish_reason(request, item, cut or stops.stopped))
                else:
                    # after a stop string the rest is read, not shown: the final token counts come at the end
                    text = stops.feed(item.text)
                    charge.sent(text, prompt_tokens=item.prompt_tokens)
                    if text:
                        yield answering.StreamPiece(text)
        finally:
            try:
                pieces.close()  # stops the model first: recording can wait, a generation holds the model
            finally:
                charge.close()

    return items()


def stop_cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first of the ``stops`` strings, and whether one was found."""
    positions = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True


class StopFilter:
    """Cuts a stream of text pieces before the first stop string, holding back only what could begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.stopped = False
        self._held = ""

    def feed(self, piece: str) -> str:
        """The part of ``piece`` that can be shown now."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        buffer = self._held + piece
        cut, found = stop_cut(buffer, self.stops)
        if found:
            self.stopped = True
            self._held = ""
            return cut
        keep = max((n for s in self.stops for n in range(1, len(s)) if buffer.endswith(s[:n])), default=0)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """What was held back, once the stream has ended without a stop string."""
        held, self._held = self._held, ""
        return held


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def question_submit(*, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None) -> ApiTask:
    """Queue the request for a worker; permission and quota are checked now, and again when it runs."""
    _prepare(request, user, api_key)
    with transaction.atomic():
        task = ApiTask.objects.create(user=user, api_key=api_key, endpoint=request.endpoint)

        transaction.on_commit(lambda: task_dispatch.question_answer(task_id=str(task.pk), params=request.as_dict()))
    return task


def question_run_task(*, task_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """The worker's side of :func:`question_submit`."""
    task = ApiTask.objects.select_related("user", "api_key").get(pk=task_id)
    request = QuestionRequest(**params)
    return question_answer(request=request, user=task.user, api_key=task.api_key)
