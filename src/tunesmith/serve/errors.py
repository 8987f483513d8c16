"""Errors as the OpenAI API shapes them, each classified and logged as one JSON line.

Classes: `input` (the request is wrong: 400, 401, 404, 413, 422), `model` (generation raised, or
its answer failed the output check), `infrastructure` (overload 429, timeout 504, anything
unexpected 500). A client only ever sees `{"error": {"message", "type", "param", "code"}}`,
never a traceback; the log line carries the request id that the response header repeats.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from tunesmith.events import event

ErrorClass = Literal["input", "model", "infrastructure"]

class ServeError(Exception):
    def __init__(self, status: int, message: str, kind: ErrorClass, code: str,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.param, self.headers = param, headers or {}

    @property
    def type(self) -> str:
        """OpenAI's error type for the status."""
        if self.status == 401:
            return "authentication_error"
        if self.status == 429:
            return "rate_limit_error"
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


ERRORS: Counter = Counter()
"""(class, code) -> how many times; the next issue exports these as metrics."""


def record(error: ServeError, request_id: str, route: str) -> None:
    ERRORS[(error.kind, error.code)] += 1
    event("error", request_id=request_id, route=route, status=error.status, error_class=error.kind,
          code=error.code, message=error.message)
