"""What the current request (or task) is, for the logs: its id and what it spent."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

#: the id of the HTTP request (or of the request that queued the Celery task) being handled
request_id_var: ContextVar[str | None] = ContextVar("portal_request_id", default=None)

#: facts about the API call being handled, filled as it runs and written in its access line
request_facts_var: ContextVar[dict[str, Any] | None] = ContextVar("portal_request_facts", default=None)


def note(**facts: Any) -> None:
    """Add facts (tokens, end user id) to the access line of the request being handled, if any."""
    current = request_facts_var.get()
    if current is not None:
        current.update({key: value for key, value in facts.items() if value not in (None, "")})
