"""The exception tree of rh_agents.

Usage errors (a mistake in the calling code, fix the code) are kept apart from run
failures (something went wrong while the work ran) and from errors of the stored
history. Usage errors also subclass the built-in exception a Python programmer would
expect (``TypeError``, ``ValueError``, ``RuntimeError``), so ``except TypeError`` keeps
working. Classes defined outside this module are marked with their module::

    RhAgentsError
    ├── UsageError
    │   ├── InvalidArgumentError (ValueError)        a value the library cannot use
    │   │   ├── UncacheableInputError (TypeError)    core.cache
    │   │   └── MetricsPortInUseError (OSError)      telemetry: the /metrics port is taken
    │   ├── InvalidWorkError (TypeError)             not awaitable, not retryable
    │   │   └── UnpicklableWorkError                 core.executors
    │   ├── DuplicateNameError (ValueError)
    │   ├── ImmutableEventError (AttributeError)     a history entry or published event changed
    │   └── LifecycleError (RuntimeError)            used in the wrong state
    ├── ExecutionFailure
    │   ├── EventFailedError                         an ok=False result under FAIL_FAST
    │   │                                            (also of the handler's exception class)
    │   ├── ConditionFailedError                     a pre- or postcondition said no
    │   ├── InputValidationError (ValueError)        an input that does not match input_model
    │   ├── OutputValidationError (TypeError)        a result that does not match output_model
    │   ├── CircuitOpenError                         rejected by an open circuit breaker
    │   ├── AttemptTimeoutError (TimeoutError)       an attempt outlived its policy's timeout
    │   ├── RejectedResultError                      a result retry_on_result asked to retry
    │   ├── ResultSerializationError (TypeError)     a result the history cannot store
    │   ├── ParallelTimeoutError (TimeoutError)      core.parallel: a group's deadline passed
    │   └── RemoteExecutionError                     core.executors: remote work failed
    │       ├── WorkerLostError                      core.executors
    │       └── RemoteCancelledError                 core.executors
    ├── ParallelGroupError (ExceptionGroup)          core.parallel: raise_for_failures()
    └── StateError                                   the stored history cannot be used
        ├── StateNotFoundError (KeyError)
        │   └── ArtifactNotFoundError                an artifact that does not exist
        ├── StateCorruptedError                      damaged, truncated or foreign
        ├── SchemaVersionError                       written by another schema version
        ├── SnapshotMismatchError                    written by another program
        ├── StateLockedError                         another process (or state) writes the run
        └── StateStorageError                        the medium failed: disk full, I/O error

Every message is a full sentence that says what happened and what to do.
docs/errors.md explains each one; tests/reliability/test_reliability_misuse.py checks
that this tree matches the classes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArtifactNotFoundError",
    "AttemptTimeoutError",
    "CircuitOpenError",
    "ConditionFailedError",
    "DuplicateNameError",
    "EventFailedError",
    "ExecutionFailure",
    "ImmutableEventError",
    "InputValidationError",
    "InvalidArgumentError",
    "InvalidWorkError",
    "LifecycleError",
    "OutputValidationError",
    "RejectedResultError",
    "ResultSerializationError",
    "RhAgentsError",
    "SchemaVersionError",
    "SnapshotMismatchError",
    "StateCorruptedError",
    "StateError",
    "StateLockedError",
    "StateNotFoundError",
    "StateStorageError",
    "UsageError",
]


class RhAgentsError(Exception):
    """Root of every exception rh_agents raises on purpose."""


class UsageError(RhAgentsError):
    """The calling code used the library wrongly; the message says how to fix it."""


class InvalidArgumentError(UsageError, ValueError):
    """An argument has a value the library cannot work with."""


class InvalidWorkError(UsageError, TypeError):
    """Something that is not awaitable (or not retryable) was handed to the library."""


class DuplicateNameError(UsageError, ValueError):
    """A name that must be unique was used twice."""


class ImmutableEventError(UsageError, AttributeError):
    """Code tried to change a history entry or an event a subscriber received.

    Those are snapshots shared by the history and every subscriber; change a copy
    (``event.model_copy(update=...)``) instead.
    """


class LifecycleError(UsageError, RuntimeError):
    """An object was used in a state where that operation is not allowed."""


class ExecutionFailure(RhAgentsError):
    """Work ran and failed."""


class EventFailedError(ExecutionFailure):
    """An ExecutionEvent returned ``ok=False`` where a failure must raise (FAIL_FAST).

    When the event's handler raised, the error FAIL_FAST raises is made by
    :meth:`caused_by`: its ``__cause__`` is the handler's exception, and it is also an
    instance of that exception's class (a class named like ``EventFailedError[ValueError]``),
    so ``except ValueError`` catches it as it catches a plain item's ``ValueError``.

    Attributes:
        result: the failed :class:`~rh_agents.core.events.ExecutionResult`.

    Example:
        >>> try:
        ...     raise EventFailedError.caused_by("Item 0 failed: bad", None, ValueError("bad"))
        ... except ValueError as exc:
        ...     print(type(exc).__name__, isinstance(exc.__cause__, ValueError))
        EventFailedError[ValueError] True
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result

    @classmethod
    def caused_by(cls, message: str, result: Any, cause: BaseException | None) -> EventFailedError:
        """An EventFailedError for ``result`` that is also an instance of ``cause``'s class.

        The attributes of ``cause`` are copied onto it (``except QuotaError as e:
        e.code`` works) and ``cause`` becomes its ``__cause__``. A class that cannot be
        subclassed (pydantic's ``ValidationError``) is stood in for by its nearest base
        that can (``ValueError``); without a ``cause`` it is a plain EventFailedError.
        """
        kind = _failure_class(type(cause)) if isinstance(cause, Exception) else cls
        failure = kind.__new__(kind, message)
        if kind is not cls and cause is not None:
            failure.__dict__.update(
                (key, value) for key, value in vars(cause).items() if key != "__notes__"
            )
        BaseException.__init__(failure, message)
        failure.result = result
        failure.__cause__ = cause
        return failure


_failure_classes: dict[type[BaseException], type[EventFailedError]] = {}


def _failure_class(kind: type[BaseException]) -> type[EventFailedError]:
    """The subclass of EventFailedError and ``kind`` (or its nearest base that allows it)."""
    made = _failure_classes.get(kind)
    if made is not None:
        return made
    made = EventFailedError
    for base in kind.__mro__:
        if base in (Exception, BaseException, object) or issubclass(EventFailedError, base):
            break
        try:
            mixed = type(
                f"EventFailedError[{base.__name__}]",
                (EventFailedError, base),
                # the message names the item and the group, whatever ``base`` prints
                # (``__module__`` is this module's: type() takes its caller's)
                {"__str__": BaseException.__str__},
            )
            mixed.__new__(mixed, "")
        except TypeError:
            # A final class, a layout conflict, or a __new__ that needs arguments of its
            # own (pydantic's ValidationError): try the next base.
            continue
        made = mixed
        break
    if len(_failure_classes) < 256:  # classes made at run time must not pile up
        _failure_classes[kind] = made
    return made


class CircuitOpenError(ExecutionFailure):
    """A call was rejected without running because its circuit breaker is open."""

    def __init__(self, breaker: str, retry_after: float | None = None) -> None:
        wait = f" Retry in {retry_after:.3g}s" if retry_after is not None else " Retry later"
        super().__init__(
            f"Circuit breaker '{breaker}' is open after repeated failures; the call was "
            f"rejected without running.{wait}, or raise the breaker's threshold."
        )
        self.breaker = breaker
        self.retry_after = retry_after


class AttemptTimeoutError(ExecutionFailure, TimeoutError):
    """One attempt did not finish within the ``timeout`` of its
    :class:`~rh_agents.core.policy.Policy` and was cancelled.

    A failure like any other: the policy's retry guard retries it (each attempt gets a
    fresh deadline), and ``except TimeoutError`` catches it.

    Attributes:
        what: the call that timed out, e.g. ``"actor 'search'"``.
        timeout: the policy's timeout in seconds.
        attempt: the 1-based number of the attempt that timed out.
    """

    def __init__(self, what: str, timeout: float, attempt: int) -> None:
        super().__init__(
            f"Attempt {attempt} of {what} did not finish within its policy's timeout of "
            f"{timeout:g}s and was cancelled. Raise Policy(timeout=...) if the call needs "
            f"longer, or let the policy retry it (Policy(retry=RetryConfig(...)))."
        )
        self.what = what
        self.timeout = timeout
        self.attempt = attempt

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.timeout, self.attempt))


class RejectedResultError(ExecutionFailure):
    """An attempt returned a result that the retry policy's ``retry_on_result`` predicate
    said to retry (an "overloaded" answer, an empty completion, ...).

    The retry guard retries it like a raised failure, whatever ``retry_on_exceptions``
    says; when no attempt is left, the call fails with it and its ``result`` is the last
    attempt's value.

    Attributes:
        what: the call, e.g. ``"actor 'writer'"``.
        attempt: the 1-based number of the attempt that returned ``result``.
        result: what the attempt returned.
    """

    def __init__(self, what: str, attempt: int, result: Any) -> None:
        super().__init__(
            f"Attempt {attempt} of {what} returned a result that the retry policy's "
            f"retry_on_result predicate rejected: {result!r:.120}. It is retried while "
            f"attempts and time are left; raise RetryConfig(max_attempts=...) or change "
            f"the predicate if such results are acceptable."
        )
        self.what = what
        self.attempt = attempt
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.attempt, self.result))


class ConditionFailedError(ExecutionFailure):
    """A precondition or postcondition of an actor returned False."""


class InputValidationError(ExecutionFailure, ValueError):
    """An input did not validate into its actor's input_model; the handler did not run."""


class OutputValidationError(ExecutionFailure, TypeError):
    """A handler returned a value that does not match its actor's output_model."""


class ResultSerializationError(ExecutionFailure, TypeError):
    """A result cannot be written to the history, so it could not be replayed later."""


class StateError(RhAgentsError):
    """A stored state or history cannot be used."""


class StateNotFoundError(StateError, KeyError):
    """No state with the requested id exists in the backend."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ArtifactNotFoundError(StateNotFoundError):
    """No artifact with the requested id or reference exists."""


class StateCorruptedError(StateError):
    """A stored state is damaged (truncated, not a database, unreadable records)."""


class SchemaVersionError(StateError):
    """A stored state was written by an incompatible version of the schema."""


class SnapshotMismatchError(StateError):
    """A stored state belongs to another program than the one trying to resume it.

    Raised instead of replaying a recorded result that does not belong to the call: the
    pipeline name, the actor, the kind of call or the input fingerprint differs.
    """


class StateLockedError(StateError):
    """Another writer holds the run: only one process (one state) at a time records into it.

    Raised when a run is opened for writing while another process, or another
    :class:`~rh_agents.core.execution.ExecutionState` of this process, holds its lease,
    and when the journal was appended to by another writer after this state was loaded.
    Nothing of this state was recorded, and no call of it ran.

    Attributes:
        state_id: the run.
        holder: who holds the lease (a :class:`~rh_agents.core.storage.LeaseHolder`
            with host, pid and since), or None when the conflict is not a held lease.
    """

    def __init__(self, message: str, *, state_id: str | None = None, holder: Any = None) -> None:
        super().__init__(message)
        self.state_id = state_id
        self.holder = holder


class StateStorageError(StateError):
    """The storage medium failed: disk full, I/O error, permission denied or a lock timeout.

    Raised by the storage backends (:mod:`rh_agents.storage`). The original ``OSError``
    or driver error (``sqlite3.Error``, ...) is chained as ``__cause__``. The stored data
    is not known to be damaged; retrying after fixing the cause may succeed.
    """
