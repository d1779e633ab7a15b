"""What a question may ask, written once: the API, the OpenAI face and the pages all validate against these.

Limits an operator sets (``LLM_MAX_TOKENS``, ``MAX_UPLOAD_MB``, ``API_RATE_LIMIT``) are settings; these are fixed.
"""

from __future__ import annotations

#: the longest question (or ``prompt``), in characters
QUESTION_MAX_CHARS = 8000
#: the most messages a question's ``history`` may hold (older turns matter little to a follow-up)
HISTORY_MAX_MESSAGES = 100
#: the longest end-user id a caller may attach for quotas (``UsageRecord.end_user_id``)
END_USER_ID_MAX_CHARS = 200
#: the longest collection slug a request may name (``Collection.slug``)
COLLECTION_SLUG_MAX_CHARS = 64
TEMPERATURE_MAX = 2.0
#: what a request that leaves them out gets (``max_tokens`` is lowered to ``LLM_MAX_TOKENS`` if need be)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_MAX_TOKENS = 256
