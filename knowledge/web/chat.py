"""The chat pages: conversations, questions answered as a stream, citations, feedback.

Thin views: reads through ``knowledge.selectors``, writes through
``knowledge.services.conversations``. Every page works without JavaScript (a question is then
answered in full before the page reloads); with it, answers stream in as they are generated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterator
from typing import Any

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_POST

from knowledge.api.limits import rate_limit_check
from knowledge.errors import (
    KnowledgeError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    http_error,
)
from knowledge.models import Conversation, Document, Message
from knowledge.selectors import (
    conversation_for,
    conversation_messages,
    conversations_of,
    documents_visible_to,
    message_for,
)
from knowledge.services import conversations
from knowledge.services.answering import StreamPiece
from knowledge.services.audit import client_ip
from knowledge.web.decorators import wants_event_stream
from knowledge.web.forms import QuestionForm
from knowledge.web.presenters import message_view
from llm.errors import LLMError

logger = logging.getLogger(__name__)

#: conversations listed beside the chat
SIDEBAR_SIZE = 50


def _pending_key(conversation_id: int) -> str:
    return f"kp-pending-question-{conversation_id}"


def _sidebar(request: HttpRequest, current: Conversation | None = None) -> dict[str, Any]:
    return {"conversations": conversations_of(user=request.user)[:SIDEBAR_SIZE], "current": current}


def _packaged_model() -> bool:
    """Whether "Write an answer" runs the small model shipped with the portal (no model of the deployment's own)."""
    return settings.RAG_LLM_BACKEND == "local" and not settings.RAG_LLM_MODEL_DIR


def _conversation_or_404(request: HttpRequest, conversation_id: int) -> Conversation:
    conversation = conversation_for(user=request.user, conversation_id=conversation_id)
    if conversation is None:  # someone else's conversation is as absent as a missing one
        raise Http404
    return conversation


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Conversations on the side, a question box that starts a new one."""
    return _render_home(request, QuestionForm(user=request.user))


def _render_home(request: HttpRequest, form: QuestionForm, status: int = 200) -> HttpResponse:
    context = {
        **_sidebar(request),
        "form": form,
        "packaged_model": _packaged_model(),
        "ready_count": documents_visible_to(user=request.user).filter(status=Document.Status.READY).count(),
    }
    return render(request, "chat/home.html", context, status=status)


@login_required
@require_POST
def conversation_create(request: HttpRequest) -> HttpResponse:
    """Start a conversation with its first question; the conversation page then asks it."""
    form = QuestionForm(request.POST, user=request.user)
    if not form.is_valid():
        return _render_home(request, form, status=400)
    collection = form.cleaned_data["collection"]
    conversation = conversations.conversation_create(user=request.user, collection=collection)
    # Kept in the session rather than the URL: questions do not belong in logs and histories.
    request.session[_pending_key(conversation.pk)] = {
        "question": form.cleaned_data["question"],
        "mode": form.cleaned_data["mode"],
        "collection": collection.slug if collection else "",
    }
    return redirect("conversation-detail", conversation_id=conversation.pk)


@login_required
@require_GET
def conversation_detail(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """One conversation (its owner only): the questions, the answers with their sources, the question box."""
    conversation = _conversation_or_404(request, conversation_id)
    history = list(conversation_messages(conversation=conversation))
    initial: dict[str, Any] = {"collection": conversation.collection}
    if history and history[-1].mode:
        initial["mode"] = history[-1].mode
    pending = request.session.pop(_pending_key(conversation.pk), None)
    if pending:
        initial.update(pending)
    context = {
        **_sidebar(request, conversation),
        "conversation": conversation,
        "message_views": [message_view(message) for message in history],
        "form": QuestionForm(user=request.user, initial=initial),
        "packaged_model": _packaged_model(),
        "autosubmit": bool(pending),
    }
    return render(request, "chat/conversation.html", context)


@login_required
@require_POST
def conversation_delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _conversation_or_404(request, conversation_id)
    conversations.conversation_delete(conversation=conversation)
    flash.success(request, _("The conversation was deleted."))
    return redirect("home")


def _error_text(exc: KnowledgeError) -> str:
    if isinstance(exc, QuotaExceededError):
        return _("Your daily token quota is spent. It resets at midnight (UTC).")
    if isinstance(exc, RateLimitedError):
        return ngettext(
            "Too many questions in a short time. Try again in %(seconds)d second.",
            "Too many questions in a short time. Try again in %(seconds)d seconds.",
            exc.retry_after,
        ) % {"seconds": exc.retry_after}
    if isinstance(exc, PermissionDeniedError):
        return _("You may not search this collection.")
    if isinstance(exc, NotFoundError):
        return _("This collection does not exist.")
    return exc.message


def _ask_refused(request: HttpRequest, conversation: Conversation, exc: KnowledgeError) -> HttpResponse:
    text = _error_text(exc)
    if wants_event_stream(request):
        refusal = http_error(exc)
        response = JsonResponse({"error": text}, status=refusal.status)
        if refusal.retry_after is not None:
            response["Retry-After"] = str(refusal.retry_after)
        return response
    flash.error(request, text)
    return redirect("conversation-detail", conversation_id=conversation.pk)


@login_required
@require_POST
def message_create(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """Ask a question in a conversation.

    With ``Accept: text/event-stream`` the answer streams as server-sent events: ``token``
    (``{"text"}``) while it is generated, then ``done`` (``{"html", "message_id", "title"}``, the
    rendered message with its citations), or ``error`` (``{"message"}``). Without it (no
    JavaScript) the answer is made in full and the conversation page is shown again.
    """
    conversation = _conversation_or_404(request, conversation_id)
    try:
        rate_limit_check(request)  # the same budget as the user's API calls
    except RateLimitedError as exc:
        return _ask_refused(request, conversation, exc)
    form = QuestionForm(request.POST, user=request.user)
    if not form.is_valid():
        errors = "; ".join(str(error) for field_errors in form.errors.values() for error in field_errors)
        return _ask_refused(request, conversation, KnowledgeError(errors))
    try:
        stream = conversations.message_stream(
            conversation=conversation,
            question=form.cleaned_data["question"],
            mode=form.cleaned_data["mode"],
            collection=form.cleaned_data["collection"],
            ip_address=client_ip(request),
        )
    except KnowledgeError as exc:
        return _ask_refused(request, conversation, exc)

    if wants_event_stream(request):
        response = StreamingHttpResponse(_events(request, stream), content_type="text/event-stream; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the stream back
        return response

    message: Message | None = None
    try:
        for item in stream:
            if isinstance(item, Message):
                message = item
    except Exception as exc:
        flash.error(request, _failure_text(exc))
    url = reverse("conversation-detail", kwargs={"conversation_id": conversation.pk})
    return redirect(f"{url}#m{message.pk}" if message else url)


def _failure_text(exc: Exception) -> str:
    if isinstance(exc, LLMError):
        logger.warning("The language model could not answer: %s", exc)
        return _("The language model is unavailable right now. Try again later, or choose “Quote the sources”.")
    logger.exception("A chat question could not be answered")
    return _("Something went wrong while answering. Please try again.")


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _events(request: HttpRequest, stream: Generator[StreamPiece | Message, None, None]) -> Iterator[str]:
    # The stream is read after the view has returned: keep the request's language for what it renders.
    language = translation.get_language()
    try:
        for item in stream:
            if isinstance(item, Message):
                with translation.override(language):
                    html = render_to_string("partials/_message.html", {"view": message_view(item)}, request=request)
                yield _event("done", {"html": html, "message_id": item.pk, "title": item.conversation.title})
            else:
                yield _event("token", {"text": item.text})
    except Exception as exc:  # the response has started: the error can only travel as an event
        with translation.override(language):
            yield _event("error", {"message": _failure_text(exc)})
    finally:
        stream.close()  # a reader who went away: the answer is charged and the model stops now


@login_required
@require_POST
def message_feedback(request: HttpRequest, message_id: int) -> HttpResponse:
    """Thumbs up (1) or down (-1) on an answer; pressing the same thumb again takes the vote back."""
    message = message_for(user=request.user, message_id=message_id)
    if message is None:
        raise Http404
    value = {"1": 1, "-1": -1}.get(request.POST.get("feedback", ""))
    if value == message.feedback:
        value = None
    conversations.message_set_feedback(message=message, feedback=value)
    if request.htmx:
        return render(request, "partials/_feedback.html", {"message": message})
    url = reverse("conversation-detail", kwargs={"conversation_id": message.conversation_id})
    return redirect(f"{url}#m{message.pk}")
