"""The engine's typed errors: what went wrong, never how HTTP says it (the routes map them to status codes).

Each carries the request field at fault (`param`) where there is one, and a `kind` that the
failure counter is labelled by, so a dashboard tells overload from bad input from a broken batch.
"""

from __future__ import annotations


class EngineError(Exception):
    kind = "engine"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param


class InvalidInput(EngineError):
    """The request's own content cannot be computed (untokenisable text, an id outside the vocabulary ...)."""

    kind = "invalid_input"


class UnknownPrompt(EngineError):
    kind = "unknown_prompt"


class ContextTooLong(EngineError):
    """Prompt + input + new tokens do not fit the backbone's positions."""

    kind = "context_length_exceeded"


class Overloaded(EngineError):
    """Too much work is queued; the client should come back after `retry_after` seconds."""

    kind = "overloaded"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(EngineError):
    kind = "deadline"


class ShuttingDown(EngineError):
    kind = "shutting_down"


class BatchFailed(EngineError):
    """The model failed on this request alone (after the batch it was in was retried in halves)."""

    kind = "batch_failed"


class Cancelled(EngineError):
    """The client went away; nobody reads this error, it only ends the job."""

    kind = "cancelled"
