"""One API question, run the same way inline, streamed, or on a worker ("async": true)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction

from knowledge.models import ApiKey, ApiTask
from knowledge.services import access, answering, usage

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

RAG = "rag"
GENERATE = "generate"


@dataclass(frozen=True)
class QuestionRequest:
    """A validated request to /rag/ or /generate/ (see the serializers)."""

    endpoint: str
    prompt: str
    temperature: float
    top_p: float
    max_tokens: int
    user_id: str = ""
    top_k: int = 5
    collection: str | None = None
    mode: str = answering.EXTRACTIVE

    @classmethod
    def from_validated(cls, endpoint: str, data: dict[str, Any]) -> QuestionRequest:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(endpoint=endpoint, **fields)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def response_body(request: QuestionRequest, answer: answering.Answer) -> dict[str, Any]:
    body: dict[str, Any] = {"output": answer.output}
    if request.endpoint == RAG:
        body["sources"] = [
            {key: value for key, value in source.as_dict().items() if key != "heading"} for source in answer.sources
        ]
    body["meta"] = answer.meta()
    return body


def _prepare(request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None) -> list[int]:
    usage.quota_check(user=user, api_key=api_key, end_user_id=request.user_id)
    if request.endpoint == RAG:
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


def question_answer(
    *, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None
) -> dict[str, Any]:
    """Run the request and return the response body; usage is recorded, the quota checked first."""
    collection_ids = _prepare(request, user, api_key)
    if request.endpoint == RAG:
        answer = answering.answer_question(
            question=request.prompt,
            collection_ids=collection_ids,
            top_k=request.top_k,
            mode=request.mode,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
        )
    else:
        answer = answering.text_generate(
            prompt=request.prompt,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
        )
    _record(request, user, api_key, answer)
    return response_body(request, answer)


def question_stream(
    *, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream events: ("token", {"text"}) while generating, then ("done", body).

    Permission and quota errors are raised before the first event, so they become plain JSON errors.
    """
    collection_ids = _prepare(request, user, api_key)
    if request.endpoint == RAG:
        pieces = answering.answer_question_stream(
            question=request.prompt,
            collection_ids=collection_ids,
            top_k=request.top_k,
            mode=request.mode,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
        )
    else:
        pieces = answering.text_generate_stream(
            prompt=request.prompt, temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens
        )
    first = next(pieces)  # retrieval and model loading happen here, before the response starts

    def events() -> Iterator[tuple[str, dict[str, Any]]]:
        for item in _chain(first, pieces):
            if isinstance(item, answering.Answer):
                _record(request, user, api_key, item)
                yield "done", response_body(request, item)
            else:
                yield "token", {"text": item.text}

    return events()


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def question_submit(*, request: QuestionRequest, user: AbstractBaseUser, api_key: ApiKey | None = None) -> ApiTask:
    """Queue the request for a worker; permission and quota are checked now, and again when it runs."""
    _prepare(request, user, api_key)
    with transaction.atomic():
        task = ApiTask.objects.create(user=user, api_key=api_key, endpoint=request.endpoint)

        def send() -> None:
            from knowledge.tasks import question_answer_task

            question_answer_task.apply_async(args=[str(task.pk), request.as_dict()], task_id=str(task.pk))

        transaction.on_commit(send)
    return task


def question_run_task(*, task_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """The worker's side of :func:`question_submit`."""
    task = ApiTask.objects.select_related("user", "api_key").get(pk=task_id)
    request = QuestionRequest(**params)
    return question_answer(request=request, user=task.user, api_key=task.api_key)
