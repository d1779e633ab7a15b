"""Conversations of the chat pages: questions asked, answers given with their sources, feedback."""

from __future__ import annotations

import re
import time
from collections.abc import Generator
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from knowledge.models import Chunk, Collection, Conversation, Message
from knowledge.services import access, answering, usage

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

#: the UsageRecord endpoint of questions asked in the web chat (the API uses "rag" and "generate")
CHAT_ENDPOINT = "chat"
#: previous questions and answers sent along with a follow-up question
HISTORY_TURNS = 3
_TITLE_LENGTH = 80
_CITATION = re.compile(r"\[(\d{1,3})\]")


def conversation_create(
    *, user: AbstractBaseUser, collection: Collection | None = None, title: str = ""
) -> Conversation:
    """Start a conversation for ``user``, searching ``collection`` (None: every collection they may read)."""
    return Conversation.objects.create(user=user, collection=collection, title=title[:300])


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation and its messages."""
    conversation.delete()


def conversation_history(*, conversation: Conversation, turns: int = HISTORY_TURNS) -> list[tuple[str, str]]:
    """The last ``turns`` (question, answer) pairs of a conversation, oldest first, for a follow-up question."""
    latest = conversation.messages.exclude(answer="").order_by("-created_at", "-id")
    rows = list(latest.values_list("question", "answer")[:turns])
    return [(question, answer) for question, answer in reversed(rows)]


def cited_numbers(text: str, *, sources: int) -> list[int]:
    """The source numbers ``[n]`` an answer cites, in order of first citation, within 1..``sources``."""
    numbers: list[int] = []
    for match in _CITATION.finditer(text):
        number = int(match.group(1))
        if 1 <= number <= sources and number not in numbers:
            numbers.append(number)
    return numbers


def message_create(
    *, conversation: Conversation, question: str, answer: answering.Answer, latency_ms: int | None = None
) -> Message:
    """Store one question and its answer, with the sources shown and the chunks the answer cites."""
    # the closest passages to a question none answers are kept apart, marked: they are not sources
    sources = [source.as_dict() for source in answer.sources] + [
        {**source.as_dict(), "related": True} for source in answer.related
    ]
    cited = [answer.sources[n - 1].id for n in cited_numbers(answer.output, sources=len(answer.sources))]
    with transaction.atomic():
        message = Message.objects.create(
            conversation=conversation,
            question=question,
            answer=answer.output,
            mode=answer.mode,
            sources=sources,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            latency_ms=latency_ms if latency_ms is not None else int(answer.seconds * 1000),
            model=answer.model[:200],
        )
        # A chunk may have been deleted since it was retrieved: link only those still there.
        message.cited_chunks.set(Chunk.objects.filter(pk__in=cited))
        changes = {"updated_at": timezone.now()}
        if not conversation.title:
            changes["title"] = _title_from(question)
        Conversation.objects.filter(pk=conversation.pk).update(**changes)
        for field, value in changes.items():
            setattr(conversation, field, value)
    return message


def _title_from(question: str) -> str:
    title = " ".join(question.split())
    return title if len(title) <= _TITLE_LENGTH else title[: _TITLE_LENGTH - 1].rstrip() + "…"


def message_set_feedback(*, message: Message, feedback: int | None) -> Message:
    """Record whether an answer helped (1), did not (-1), or clear the vote (None)."""
    if feedback not in (None, *Message.Feedback.values):
        raise ValueError(f"feedback must be -1, 1 or None; got {feedback!r}")
    message.feedback = feedback
    message.save(update_fields=["feedback"])
    return message


def message_stream(
    *,
    conversation: Conversation,
    question: str,
    mode: str,
    collection: Collection | None,
    top_k: int | None = None,
    ip_address: str = "",
) -> Generator[answering.StreamPiece | Message, None, None]:
    """Answer ``question`` in ``conversation``: text pieces as they are generated, then the stored Message.

    The checks run before the first item is asked for: ``QuotaExceededError`` when the owner's daily
    tokens are spent, ``NotFoundError`` for a collection they may not read (the same answer as for an
    unknown one). The previous answers of the conversation go along as history; the tokens are recorded
    as usage.
    """
    if mode not in answering.MODES:
        raise ValueError(f"mode must be one of {answering.MODES}; got {mode!r}")
    user = conversation.user
    usage.quota_check(user=user)
    collection_ids = access.collection_ids_for(user=user, slug=collection.slug if collection else None)
    if conversation.collection_id != (collection.pk if collection else None):
        conversation.collection = collection
        conversation.save(update_fields=["collection", "updated_at"])
    history = conversation_history(conversation=conversation)
    audit = usage.QuestionAudit(question=question, collection_ids=collection_ids, ip_address=ip_address)
    return _stream(conversation, question, mode, collection_ids, top_k or settings.RAG_TOP_K, history, audit)


def _stream(
    conversation: Conversation,
    question: str,
    mode: str,
    collection_ids: list[int],
    top_k: int,
    history: list[tuple[str, str]],
    audit: usage.QuestionAudit,
) -> Generator[answering.StreamPiece | Message, None, None]:
    started = time.perf_counter()
    # Charged once however the stream ends: a reader who leaves mid-answer still spent the prompt and
    # the text sent; closing the pieces stops the model.
    charge = usage.StreamCharge(user=conversation.user, endpoint=CHAT_ENDPOINT, audit=audit)
    pieces = answering.answer_question_stream(
        question=question, collection_ids=collection_ids, top_k=top_k, mode=mode, history=history
    )
    try:
        for item in pieces:
            if isinstance(item, answering.Answer):
                charge.finished(
                    prompt_tokens=item.prompt_tokens, completion_tokens=item.completion_tokens, sources=item.sources
                )
                latency_ms = int((time.perf_counter() - started) * 1000)
                yield message_create(conversation=conversation, question=question, answer=item, latency_ms=latency_ms)
            else:
                charge.sent(item.text, prompt_tokens=item.prompt_tokens)
                yield item
    finally:
        try:
            pieces.close()
        finally:
            charge.close()
