"""The checks of a group's arguments, with messages that say what to pass instead."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from rh_agents.core._validate import ExceptionClasses, is_finite_at_least, is_int_at_least
from rh_agents.core.circuit_breaker import CircuitBreaker
from rh_agents.core.errors import InvalidArgumentError
from rh_agents.core.limiter import Limiter
from rh_agents.core.parallel.models import ErrorStrategy
from rh_agents.core.policy import Policy
from rh_agents.core.retry import RetryConfig

if TYPE_CHECKING:
    from rh_agents.core.circuit_breaker import CircuitBreakerRegistry
    from rh_agents.core.clock import Clock

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "check_executor",
    "check_group_name",
    "check_limiter",
    "check_max_workers",
    "check_positive_int",
    "check_timeout",
    "error_strategy",
    "group_policy",
    "resolve_breaker",
    "retry_policy",
]


DEFAULT_MAX_WORKERS = 32
"""The most workers of a group opened with ``max_workers=None``: as many as it has items,
up to this many."""


def check_max_workers(value: Any) -> int | None:
    """``value`` if it is an integer >= 1 or None (as many workers as items, capped)."""
    if value is None:
        return None
    if type(value) is int and value >= 1:
        return value
    return check_positive_int(
        "max_workers",
        value,
        "Use 1 to run the items one at a time, or None for as many workers as items "
        f"(at most {DEFAULT_MAX_WORKERS}).",
    )


def check_positive_int(name: str, value: Any, hint: str) -> int:
    """``value`` if it is an integer >= 1; else an error naming ``name``."""
    if not is_int_at_least(value, 1):
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}. {hint}")
    return int(value)


def error_strategy(value: ErrorStrategy | str) -> ErrorStrategy:
    """The strategy named by ``value``."""
    if type(value) is ErrorStrategy:
        return value
    try:
        return ErrorStrategy(value)
    except ValueError:
        raise InvalidArgumentError(
            f"Unknown error_strategy {value!r}; use ErrorStrategy.FAIL_SLOW "
            "or ErrorStrategy.FAIL_FAST."
        ) from None


def check_timeout(timeout: float | None) -> float | None:
    """The deadline in seconds (None: none)."""
    if timeout is not None and not is_finite_at_least(timeout, 0, strict=True):
        raise InvalidArgumentError(
            f"timeout must be a positive number of seconds or None, got {timeout!r}."
        )
    return float(timeout) if timeout is not None else None


def check_limiter(limiter: object) -> None:
    """Refuse anything but a Limiter (or None)."""
    if limiter is not None and not isinstance(limiter, Limiter):
        raise InvalidArgumentError(bad_limiter_message(limiter))


def check_executor(executor: object) -> None:
    """Refuse anything but an executor object (or None)."""
    if executor is None or (
        not isinstance(executor, type)
        and inspect.iscoroutinefunction(getattr(executor, "run", None))
    ):
        return
    raise InvalidArgumentError(bad_executor_message(executor))


def bad_executor_message(executor: object) -> str:
    if isinstance(executor, str):
        return (
            f"executor must be an executor object, got the string {executor!r}; executors "
            "are objects, not names. For processes of this machine open "
            "`async with ProcessPoolItemExecutor(max_workers=4) as pool:` and pass "
            "`executor=pool`; for a Dask cluster use DaskExecutor the same way (both from "
            "rh_agents.executors). Leave executor out to run the items in the event loop."
        )
    if isinstance(executor, type):
        return (
            f"executor must be an executor object, got the class {executor.__name__}; "
            f"create one and pass it, e.g. executor={executor.__name__}() (a pool is "
            "opened with `async with`)."
        )
    return (
        f"executor must be an ItemExecutor (an object with `async def run(item)`, such as "
        f"rh_agents.executors.ProcessPoolItemExecutor) or None, got "
        f"{type(executor).__name__}."
    )


def retry_policy(
    max_retries: int,
    retry_delay: float,
    retry_on: Any,
    non_retryable: ExceptionClasses,
) -> RetryConfig | None:
    """The retry policy of a group's items (None: no retries)."""
    if not is_int_at_least(max_retries, 0):
        raise InvalidArgumentError(
            f"max_retries must be an integer >= 0 (retries after the first attempt), "
            f"got {max_retries!r}. Use 0 for no retries."
        )
    if max_retries or retry_delay != 1.0 or retry_on is not None or non_retryable:
        # Built even without retries, so a bad retry_delay or retry_on is reported at
        # once (the defaults need no check).
        retry = RetryConfig.for_group(max_retries, retry_delay, retry_on, non_retryable)
        return retry if max_retries else None
    return None


_SHORTCUT_DEFAULTS: dict[str, Any] = {
    "max_retries": 0,
    "retry_delay": 1.0,
    "retry_on": None,
    "non_retryable": (),
    "circuit_breaker": None,
    "circuit_breaker_threshold": None,
    "circuit_breaker_timeout": None,
    "limiter": None,
    "item_timeout": None,
}
"""The keyword arguments of a group that build its policy, with their defaults."""


def group_policy(
    policy: Policy | None,
    shortcuts: dict[str, Any],
    name: str | None,
    registry: CircuitBreakerRegistry,
    clock: Clock,
) -> Policy | None:
    """The group's policy: ``policy``, or the one its shortcut arguments build (None when
    they ask for no guard).

    Args:
        policy: what ``policy=`` got.
        shortcuts: the shortcut arguments by name (see ``_SHORTCUT_DEFAULTS``).
        name: the group's name (names the group's own breaker).
        registry: where a breaker named by ``circuit_breaker="..."`` is shared.
        clock: the clock of a breaker created here.

    Raises:
        InvalidArgumentError: ``policy`` is not a Policy, or comes with a shortcut
            argument, or a shortcut argument is invalid.
    """
    if policy is not None:
        if not isinstance(policy, Policy):
            raise InvalidArgumentError(
                f"policy must be a rh_agents Policy or None, got {type(policy).__name__}; "
                "build one with Policy(retry=..., breaker=..., limiter=..., timeout=...)."
            )
        given = [
            key
            for key, default in _SHORTCUT_DEFAULTS.items()
            if shortcuts[key] != default and not (default == () and not shortcuts[key])
        ]
        if given:
            raise InvalidArgumentError(
                f"state.parallel() got policy= together with {', '.join(given)}; those "
                "arguments are shortcuts that build a policy, so the two would conflict. "
                "Put everything into the Policy (retry=RetryConfig.for_group(...), "
                "breaker=, limiter=, timeout= for item_timeout) or leave policy= out."
            )
        return policy
    if shortcuts == _SHORTCUT_DEFAULTS and type(shortcuts["max_retries"]) is int:
        return None  # no guard asked for (most groups): nothing to check or build
    check_limiter(shortcuts["limiter"])
    retry = retry_policy(
        shortcuts["max_retries"],
        shortcuts["retry_delay"],
        shortcuts["retry_on"],
        shortcuts["non_retryable"],
    )
    breaker = resolve_breaker(
        registry,
        shortcuts["circuit_breaker"],
        shortcuts["circuit_breaker_threshold"],
        shortcuts["circuit_breaker_timeout"],
        name,
        clock,
    )
    limiter = shortcuts["limiter"]
    item_timeout = shortcuts["item_timeout"]
    if item_timeout is not None and not is_finite_at_least(item_timeout, 0, strict=True):
        raise InvalidArgumentError(
            f"item_timeout must be a positive number of seconds (the bound of each attempt "
            f"of each item) or None, got {item_timeout!r}."
        )
    if retry is None and breaker is None and limiter is None and item_timeout is None:
        return None
    return Policy(retry=retry, breaker=breaker, limiter=limiter, timeout=item_timeout)


def resolve_breaker(
    registry: CircuitBreakerRegistry,
    breaker: CircuitBreaker | str | None,
    threshold: int | None,
    cooldown: float | None,
    name: str | None,
    clock: Clock,
) -> CircuitBreaker | None:
    """The group's circuit breaker: the one given, a shared one by name, a breaker of
    its own when a threshold is given, or None.

    Settings left out (None) take a shared breaker's own, or the defaults (5 failures,
    60 s); settings that differ from a shared breaker's are refused by the registry."""
    if isinstance(breaker, CircuitBreaker):
        return breaker
    if isinstance(breaker, str):
        return registry.get(
            breaker, failure_threshold=threshold, recovery_timeout=cooldown, clock=clock
        )
    if breaker is not None:
        raise InvalidArgumentError(
            f"circuit_breaker must be a CircuitBreaker, a breaker name or None, got "
            f"{type(breaker).__name__}."
        )
    if threshold is None:
        return None
    check_positive_int("circuit_breaker_threshold", threshold, "Or pass None for none.")
    return CircuitBreaker(
        f"parallel:{name or 'group'}",
        failure_threshold=threshold,
        recovery_timeout=60.0 if cooldown is None else cooldown,
        clock=clock,
    )


GROUP_NAME_RESERVED = "#[]"
"""Characters a group name must not contain: its address would be another one's."""


def check_group_name(name: object) -> None:
    """Reject group names that cannot be told apart from other addresses.

    ``/`` is allowed: it is replaced by ``_`` in the address, and the per-parent ordinal
    keeps a group ``a/b`` and a group ``a_b`` apart (``parallel:a_b``,
    ``parallel:a_b#1``). ``#`` and ``[ ]`` are not: ``x#1`` would take the address of the
    second group named ``x``, and ``y[0]`` that of item 0 of group ``y``.
    """
    if name is None:
        return
    if type(name) is str and name.isidentifier():
        return  # the common case: no blank, no reserved character
    if not isinstance(name, str):
        raise InvalidArgumentError(f"name must be a string or None, got {name!r}.")
    if not name.strip():
        raise InvalidArgumentError(
            f"A parallel group's name must not be empty or blank, got {name!r}; give it a "
            "name such as 'docs', or leave name= out for an unnamed group."
        )
    bad = sorted(set(name) & set(GROUP_NAME_RESERVED))
    if bad:
        raise InvalidArgumentError(
            f"Parallel group name {name!r} contains {''.join(bad)!r}; '#', '[' and ']' "
            "structure addresses (a group named 'x#1' would get the address of the second "
            "group named 'x', and 'y[0]' that of item 0 of group 'y'). Use letters, "
            "digits, spaces, '-', '_', '.' or '/'."
        )


def bad_limiter_message(limiter: object) -> str:
    if isinstance(limiter, str):
        return (
            f"limiter must be a Limiter object, got the string {limiter!r}; limiters are "
            "shared by passing the same object, not by name. Create it once, e.g. "
            f"`shared = Limiter({limiter!r}, max_concurrency=8)`, and pass `limiter=shared` "
            "to every group that calls the resource."
        )
    return (
        f"limiter must be a rh_agents Limiter or None, got {type(limiter).__name__}; "
        "create one with Limiter(name, max_concurrency=...)."
    )
