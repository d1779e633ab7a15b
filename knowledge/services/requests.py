"""One API question, run the same way inline, streamed, or on a worker ("async": true)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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
#: the endpoints that retrieve, and whose answers come with their sources
RETRIEVAL = frozenset({RAG, CHAT})


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


def _prepare(request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None) -> list[int]:
    usage.quota_check(user=user, end_user_id=request.user_id)
    if request.endpoint in RETRIEVAL:
        return access.collection_ids_for(user=user, api_key=api_key, slug=request.collection)
    return []


def _events(request: QuestionRequest, collection_ids: list[int]) -> answering.AnswerEvents:
    if request.endpoint in RETRIEVAL:
        return answering.answer_question_stream(
            question=request.prompt,
            collection_ids=collection_ids,
            top_k=request.top_k,
            mode=request.mode,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            history=request.history,
            stop=request.stop,
        )
    return answering.text_generate_stream(
        prompt=request.prompt,
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_tokens,
        stop=request.stop,
    )


def question_stream(
    *, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None, ip_address: str = ""
) -> answering.AnswerEvents:
    """Run the request: text pieces as they come, then the :class:`~answering.Answer` (cut at ``request.stop``,
    with the model's finish reason and token counts).

    Permission, quota, model and prompt errors are raised here, before the first item, so that a
    caller can still answer them as plain errors. The pieces join to the answer's output (but for
    the whitespace around a generated answer, which the answer's output has not).

    Usage is recorded once however the stream ends: the answer's counts when it finishes; the prompt
    and the text sent so far when it is closed early (the client went away) or fails. Closing the
    iterator stops the model. The question enters the audit log with its usage (``usage.StreamCharge``).
    """
    collection_ids = _prepare(request, user, api_key)
    events = _events(request, collection_ids)
    first = next(events)  # retrieval and model loading happen here, before the response starts
    charge = usage.StreamCharge(
        user=user,
        api_key=api_key,
        end_user_id=request.user_id,
        endpoint=request.endpoint,
        audit=usage.QuestionAudit(question=request.prompt, collection_ids=collection_ids, ip_address=ip_address),
    )

    def items() -> answering.AnswerEvents:
        try:
            for item in _chain(first, events):
                if isinstance(item, answering.Answer):
                    charge.finished(
                        prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens, sources=item.sources
                    )
                else:
                    charge.sent(item.text, prompt_tokens=item.prompt_tokens)
                yield item
        finally:
            try:
                events.close()  # stops the model first: recording can wait, a generation holds the model
            finally:
                charge.close()

    return items()


def question_answer(
    *, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None, ip_address: str = ""
) -> answering.Answer:
    """:func:`question_stream` run to its end: the answer; usage is recorded, the quota checked first."""
    return answering.answer_of(question_stream(request=request, user=user, api_key=api_key, ip_address=ip_address))


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def question_submit(
    *, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None, ip_address: str = ""
) -> ApiTask:
    """Queue the request for a worker; permission and quota are checked now, and again when it runs (and
    audited then, with the asker's ``ip_address``)."""
    _prepare(request, user, api_key)
    with transaction.atomic():
        task = ApiTask.objects.create(user=user, api_key=api_key, endpoint=request.endpoint)

        transaction.on_commit(
            lambda: task_dispatch.question_answer(task_id=str(task.pk), params=request.as_dict(), ip_address=ip_address)
        )
    return task


def question_run_task(*, task_id: str, params: dict[str, Any], ip_address: str = "") -> dict[str, Any]:
    """The worker's side of :func:`question_submit`: the answer as a record (``Answer.as_record``)."""
    task = ApiTask.objects.select_related("user", "api_key").get(pk=task_id)
    request = QuestionRequest(**params)
    return question_answer(request=request, user=task.user, api_key=task.api_key, ip_address=ip_address).as_record()
