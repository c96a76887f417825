"""ExecutionResult: what an invocation (or a parallel-group item) returned."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from typing_extensions import TypeVar

from rh_agents.core._models import set_extra, set_fields_set, set_private
from rh_agents.core.types import ExecutionStatus

__all__ = ["ExecutionResult", "make_result"]

T = TypeVar("T", default=Any)


class ExecutionResult(BaseModel, Generic[T]):
    """What an invocation (or a parallel-group item) returned.

    Attributes:
        result: the value, when ``ok`` (None otherwise; typed as the value, so check
            ``ok`` before using it).
        ok: False when the work failed, was rejected, timed out or was cancelled.
        error_message: what went wrong (also readable as the seed's ``erro_message``).
        error_type: the exception class name.
        execution_time: seconds the work took.
        address: the invocation's address, for ExecutionEvent calls.
        index / name / attempts: set on results of parallel-group items.
        status: the terminal status when known (completed, failed, cancelled, ...).
        from_cache: the value came from the result cache (a hit, or a call that waited
            for an identical concurrent call) instead of running the handler.
        replayed: the value is the recorded result of a restored run (status
            RECOVERED); the handler did not run.
        metadata: event metadata of parallel ExecutionEvents (address, actor, group id,
            index, cache and replay flags).
        exception: the exception object, kept out of serialization.

    Example:
        >>> r = ExecutionResult(result=42, execution_time=0.1)
        >>> r.ok, r.result
        (True, 42)
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(
        arbitrary_types_allowed=True, populate_by_name=True
    )

    if TYPE_CHECKING:
        # Typed as the value a successful call returns, so `result.result.text` needs no
        # narrowing; it is None when ``ok`` is False (check ``ok`` first).
        result: T = None  # type: ignore[assignment]
    else:
        result: T | None = None
    ok: bool = True
    error_message: str | None = Field(
        default=None, validation_alias=AliasChoices("error_message", "erro_message")
    )
    error_type: str | None = None
    execution_time: float = 0.0
    address: str | None = None
    index: int | None = None
    name: str | None = None
    attempts: int = 1
    status: ExecutionStatus | None = None
    from_cache: bool = False
    replayed: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    traceback: str | None = None
    exception: BaseException | None = Field(default=None, exclude=True, repr=False)

    @property
    def erro_message(self) -> str | None:
        """The seed framework's spelling of :attr:`error_message`."""
        return self.error_message

    if not TYPE_CHECKING:

        def __setattr__(self, name: str, value: Any) -> None:
            # Results built by make_result share one empty fields-set; pydantic adds the
            # name to it on assignment, so the result takes a set of its own first
            # (copies already get their own: pydantic copies the set).
            if self.__pydantic_fields_set__ is _NO_FIELDS_SET:
                _setattr(self, "__pydantic_fields_set__", set())
            super().__setattr__(name, value)


_setattr = object.__setattr__
_new_result = ExecutionResult.__new__
_NO_FIELDS_SET: set[str] = set()
"""The fields-set of every result built by :func:`make_result` (none was set explicitly):
one shared set instead of one per result, a container less per group item for the
garbage collector to track. Never changed (see ``ExecutionResult.__setattr__``)."""


def make_result(
    result: Any = None,
    *,
    ok: bool = True,
    error_message: str | None = None,
    error_type: str | None = None,
    execution_time: float = 0.0,
    address: str | None = None,
    index: int | None = None,
    name: str | None = None,
    attempts: int = 1,
    status: ExecutionStatus | None = None,
    from_cache: bool = False,
    replayed: bool = False,
    metadata: dict[str, Any] | None = None,
    traceback: str | None = None,
    exception: BaseException | None = None,
) -> ExecutionResult[Any]:
    """An :class:`ExecutionResult` of values the core already holds, without validation.

    The core builds one result per invocation and per group item, so this is a hot path:
    validation would only re-check values of the right types, and setting the fields one
    by one in declaration order lets CPython share one key table between all results
    (about 600 B per result instead of 1 380 B). The order must follow the field
    declarations (a test checks that the result equals a validated one).
    """
    r = _new_result(ExecutionResult)
    _setattr(r, "result", result)  # creates the instance dict with the shared key table
    fields = r.__dict__
    fields["ok"] = ok
    fields["error_message"] = error_message
    fields["error_type"] = error_type
    fields["execution_time"] = execution_time
    fields["address"] = address
    fields["index"] = index
    fields["name"] = name
    fields["attempts"] = attempts
    fields["status"] = status
    fields["from_cache"] = from_cache
    fields["replayed"] = replayed
    fields["metadata"] = {} if metadata is None else metadata
    fields["traceback"] = traceback
    fields["exception"] = exception
    set_fields_set(r, _NO_FIELDS_SET)
    set_extra(r, None)
    set_private(r, None)
    return r
