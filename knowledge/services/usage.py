"""Token accounting: what each request spent, the daily quota, and each user's own limits (``UserLimits``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from knowledge.errors import QuotaExceededError
from knowledge.models import Collection, UsageRecord, UserLimits
from knowledge.services import audit

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from knowledge.models import ApiKey


def _day_start(now: datetime) -> datetime:
    return datetime.combine(now.date(), time.min, tzinfo=now.tzinfo)


def usage_record(
    *,
    user: AbstractBaseUser | None,
    api_key: ApiKey | None,
    end_user_id: str = "",
    endpoint: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> UsageRecord:
    """Record the tokens one request spent, per user, key and integration end user."""
    return UsageRecord.objects.create(
        user=user if user is not None and user.is_authenticated else None,
        api_key=api_key,
        end_user_id=end_user_id or "",
        endpoint=endpoint,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def tokens_used_today(*, user: AbstractBaseUser, end_user_id: str = "") -> int:
    """Tokens ``user`` spent since midnight (UTC): through all its keys, user_ids and sessions together,
    or only under one ``end_user_id`` of theirs when it is given."""
    records = UsageRecord.objects.filter(user=user, created_at__gte=_day_start(timezone.now()))
    if end_user_id:
        records = records.filter(end_user_id=end_user_id)
    total = records.aggregate(total=Sum(F("prompt_tokens") + F("completion_tokens")))["total"]
    return int(total or 0)


def user_token_quota(user_id: int | None) -> int:
    """Tokens a day the user may spend (0 = unlimited): their own quota set in the admin, else
    ``TOKEN_QUOTA_PER_DAY``."""
    own = UserLimits.objects.filter(user_id=user_id).values_list("token_quota_per_day", flat=True).first()
    return settings.TOKEN_QUOTA_PER_DAY if own is None else own


def user_rate_limit(user_id: int | None) -> str:
    """The user's request rate (``60/m``): their own set in the admin, else ``API_RATE_LIMIT``."""
    own = UserLimits.objects.filter(user_id=user_id).values_list("rate_limit", flat=True).first()
    return own or settings.API_RATE_LIMIT


def quota_check(*, user: AbstractBaseUser, end_user_id: str = "") -> None:
    """Raise ``QuotaExceededError`` (with the seconds until the quota resets) when today's tokens are spent.

    The user's quota (:func:`user_token_quota`) bounds the owner as a whole, whatever key or ``user_id`` a
    request names; ``TOKEN_QUOTA_PER_END_USER`` bounds each ``user_id`` of the owner on top.
    """
    limits = [(user_token_quota(user.pk), "", "you")]
    if end_user_id:
        limits.append((settings.TOKEN_QUOTA_PER_END_USER, end_user_id, f"user_id {end_user_id}"))
    for quota, scope, who in limits:
        if quota <= 0:
            continue
        used = tokens_used_today(user=user, end_user_id=scope)
        if used >= quota:
            now = timezone.now()
            reset = _day_start(now) + timedelta(days=1)
            raise QuotaExceededError(
                f"The daily token quota ({quota} tokens) is spent for {who}: {used} used today. "
                "It resets at midnight UTC.",
                retry_after=int((reset - now).total_seconds()) + 1,
            )


@dataclass(frozen=True)
class QuestionAudit:
    """What the audit log keeps of a question (see ``knowledge.services.audit``)."""

    question: str
    collection_ids: Sequence[int] = ()
    ip_address: str = ""


class StreamCharge:
    """Records what a streamed answer cost exactly once, however the stream ends.

    A stream that reaches its answer is charged the answer's counts (``finished``). One cut short (the
    client went away, the model failed) is charged on ``close`` for the prompt the model was given and
    the tokens of the text sent until then, counted with the model's tokenizer.

    This is also the one place a question enters the audit log (with ``audit``): in the usage record's
    transaction, with the sources of a finished answer, so a question streamed, answered whole or run on a
    worker is recorded exactly once.
    """

    def __init__(
        self,
        *,
        user: AbstractBaseUser | None,
        api_key: ApiKey | None = None,
        end_user_id: str = "",
        endpoint: str,
        audit: QuestionAudit | None = None,
    ) -> None:
        self.user, self.api_key, self.end_user_id, self.endpoint = user, api_key, end_user_id, endpoint
        self.audit = audit
        self._sources: Sequence[Any] = ()
        self._prompt_tokens = 0
        self._sent: list[str] = []
        self.recorded = False

    def sent(self, text: str, *, prompt_tokens: int) -> None:
        """Note a piece of the answer handed to the client (``text`` may be "" when held back)."""
        self._prompt_tokens = max(self._prompt_tokens, prompt_tokens)
        if text:
            self._sent.append(text)

    def finished(self, *, prompt_tokens: int, completion_tokens: int, sources: Sequence[Any] = ()) -> None:
        """Charge the finished answer's own counts (``sources``: its ``answering.Source`` list, for the audit)."""
        self._sources = sources
        self._record(prompt_tokens, completion_tokens)

    def close(self) -> None:
        """Charge a stream that ended before its answer (nothing when it was charged already)."""
        if self.recorded:
            return
        completion_tokens = 0
        if self._prompt_tokens and self._sent:  # no model call (an extractive answer) costs nothing
            from knowledge.services import engines
            from llm.errors import LLMError
            from llm.tokens import estimate_tokens

            text = "".join(self._sent)
            try:
                completion_tokens = engines.get_llm().count_tokens(text)
            except LLMError:  # the tokenizer went away with the model: charge an estimate rather than nothing
                completion_tokens = estimate_tokens(text)
        self._record(self._prompt_tokens, completion_tokens)

    def _record(self, prompt_tokens: int, completion_tokens: int) -> None:
        if self.recorded:
            return
        self.recorded = True
        with transaction.atomic():
            usage_record(
                user=self.user,
                api_key=self.api_key,
                end_user_id=self.end_user_id,
                endpoint=self.endpoint,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
            if self.audit is not None:
                slugs = Collection.objects.filter(pk__in=self.audit.collection_ids).values_list("slug", flat=True)
                audit.audit_record(
                    action=audit.Action.QUESTION,
                    user=self.user,
                    api_key=self.api_key,
                    collections=sorted(slugs),
                    cited=audit.cited_of(self._sources),
                    question=self.audit.question,
                    ip_address=self.audit.ip_address,
                )
