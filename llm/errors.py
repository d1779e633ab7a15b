"""Errors raised by the text generation engine.

Every error has a stable ``code``, the HTTP status it answers with at an edge (``http_status``, a plain
int: this package knows no HTTP framework) and a message a person can read.
"""

from __future__ import annotations


class LLMError(Exception):
    """Base class of every error raised by ``llm``."""

    code = "llm_error"
    #: the model cannot answer now (named ``http_status``: ``GenerationError.status`` is the remote server's)
    http_status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelUnavailableError(LLMError):
    """The model cannot be loaded, the server cannot be reached, or it is too busy to answer."""

    code = "model_unavailable"


class GenerationError(LLMError):
    """The model was available but generation failed (or the server refused the request)."""

    code = "generation_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: the HTTP status the remote server answered with, when there was one
        self.status = status


class InvalidRequestError(LLMError, ValueError):
    """The caller passed parameters outside their allowed range (a programming or input error)."""

    code = "invalid_request"
    http_status = 400


class PromptTooLongError(InvalidRequestError):
    """The prompt does not fit the model's context window."""

    code = "prompt_too_long"
