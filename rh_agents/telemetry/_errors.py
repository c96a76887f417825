"""Exception text as spans show it: bounded, and without handler inputs.

Status descriptions and the ``exception.message`` of span events keep at most
:data:`MESSAGE_LIMIT` characters, ``exception.stacktrace`` its last
:data:`STACKTRACE_LIMIT`. The message of a validation error (pydantic's, or rh_agents'
own input and output validation errors quoting it) is rebuilt from the locations and
reasons of its errors, without the input values pydantic quotes.
"""

from __future__ import annotations

import traceback
from typing import Any

from pydantic import ValidationError

from rh_agents.telemetry import semconv as sc

__all__ = ["MESSAGE_LIMIT", "STACKTRACE_LIMIT", "error_message", "record_exception"]

MESSAGE_LIMIT = 500
"""Characters of an exception message kept in a span (status, events)."""
STACKTRACE_LIMIT = 8192
"""Characters of a stack trace kept in an ``exception`` span event (its last ones)."""


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}... ({len(text)} characters)"


def _validation_summary(error: ValidationError) -> str:
    """What failed to validate, where and why, without the input values."""
    reasons = [
        f"{'.'.join(str(part) for part in e['loc']) or '(input)'}: {e['msg']}"
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]
    count = len(reasons)
    return f"{count} validation error{'s' if count != 1 else ''}: {'; '.join(reasons)}"


def _safe_text(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    validation = error if isinstance(error, ValidationError) else error.__cause__
    if isinstance(validation, ValidationError):
        # rh_agents' own validation errors start with a sentence naming the actor and
        # the model, then quote pydantic's report (which quotes the input).
        head = text.split(": ", 1)[0] if validation is not error else type(error).__name__
        return f"{head}: {_validation_summary(validation)}"
    return text


def error_message(error: BaseException) -> str:
    """The message of ``error`` as spans show it: bounded to :data:`MESSAGE_LIMIT`
    characters, and without the input values of a validation error.

    Example:
        >>> error_message(ValueError("x" * 1000)).endswith("(1000 characters)")
        True
    """
    return _bounded(_safe_text(error), MESSAGE_LIMIT)


def _type_name(error: BaseException) -> str:
    cls = type(error)
    module = cls.__module__
    return f"{module}.{cls.__qualname__}" if module and module != "builtins" else cls.__qualname__


def _stacktrace(error: BaseException) -> str:
    """The traceback of ``error`` and its causes, each exception line with its bounded,
    input-free message; the last :data:`STACKTRACE_LIMIT` characters."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        cause = current.__cause__
        current = (
            cause if cause is not None or current.__suppress_context__ else (current.__context__)
        )
    parts: list[str] = []
    for exc in reversed(chain):
        if parts:
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if exc.__cause__ is not None
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        if exc.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(exc.__traceback__))
        parts.append(f"{_type_name(exc)}: {error_message(exc)}\n")
    text = "".join(parts)
    return text if len(text) <= STACKTRACE_LIMIT else "..." + text[-(STACKTRACE_LIMIT - 3) :]


def record_exception(span: Any, error: BaseException) -> None:
    """``span.record_exception``, bounded and without validation inputs."""
    span.add_event(
        sc.EVENT_EXCEPTION,
        {
            sc.ATTR_EXCEPTION_TYPE: _type_name(error),
            sc.ATTR_EXCEPTION_MESSAGE: error_message(error),
            sc.ATTR_EXCEPTION_STACKTRACE: _stacktrace(error),
        },
    )
