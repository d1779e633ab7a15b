"""Token accounting: what each request spent, and the daily quota."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import F, Sum
from django.utils import timezone

from knowledge.errors import QuotaExceededError
from knowledge.models import UsageRecord

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


def tokens_used_today(*, user: AbstractBaseUser, api_key: ApiKey | None = None, end_user_id: str = "") -> int:
    """Tokens spent since midnight (UTC): per ``end_user_id`` within a key when both are given, else per user."""
    now = timezone.now()
    records = UsageRecord.objects.filter(created_at__gte=_day_start(now))
    if api_key is not None and end_user_id:
        records = records.filter(api_key=api_key, end_user_id=end_user_id)
    else:
        records = records.filter(user=user)
    total = records.aggregate(total=Sum(F("prompt_tokens") + F("completion_tokens")))["total"]
    return int(total or 0)


def quota_check(*, user: AbstractBaseUser, api_key: ApiKey | None = None, end_user_id: str = "") -> None:
    """Raise ``QuotaExceededError`` (with the seconds until the quota resets) when today's tokens are spent."""
    quota = settings.TOKEN_QUOTA_PER_DAY
    if quota <= 0:
        return
    used = tokens_used_today(user=user, api_key=api_key, end_user_id=end_user_id)
    if used >= quota:
        now = timezone.now()
        reset = _day_start(now) + timedelta(days=1)
        who = f"user_id {end_user_id}" if api_key is not None and end_user_id else "you"
        raise QuotaExceededError(
            f"The daily token quota ({quota} tokens) is spent for {who}: {used} used today. It resets at midnight UTC.",
            retry_after=int((reset - now).total_seconds()) + 1,
        )
