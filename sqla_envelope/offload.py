"""Keyring calls that wait on a network, moved off the event loop under SQLAlchemy's asyncio.

``AsyncSession`` and ``AsyncConnection`` run the ordinary Session and Connection
in a greenlet on the event loop's thread, so EncryptedType's processors, and any
KMS request they make, run there too: a 5 ms request stalls every task of the
process for 5 ms. ``off_loop(fn, *args)`` called from such a greenlet runs ``fn``
on a worker thread and waits for it with SQLAlchemy's own ``await_only``, so the
greenlet hands control back to the loop until the answer comes. Anywhere else
(threads, sync engines, a worker thread of this module) it simply calls ``fn``.

The Encryptor decides once, from its keyring, which of its calls go through here
(only those that wait on a network), so a local keyring costs nothing more. A
thread hop costs about 50 µs of CPU, an eighth of what botocore spends on one
KMS request in this process, and nothing when called outside a greenlet but the
check (0.2 µs).

Nothing here needs greenlet: without it no SQLAlchemy greenlet can exist, and
every call runs inline.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.util import concurrency

from .cache import KeyCache

__all__ = ["OFF_LOOP_WORKERS", "OffLoopKeyCache", "in_async_greenlet", "off_loop"]

_T = TypeVar("_T")
V = TypeVar("V")

# Requests waited on at once for all the event loop's tasks; more queue, off the
# loop. As many as a KmsKeyring's default max_pool_connections.
OFF_LOOP_WORKERS = 32


def _in_greenlet_test() -> Callable[[], bool]:
    """How to tell SQLAlchemy's async greenlet, for the installed SQLAlchemy and greenlet."""
    try:
        import greenlet  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError:
        return lambda: False  # no greenlet: SQLAlchemy's asyncio cannot run
    found: Callable[[], bool] | None = getattr(concurrency, "in_greenlet", None)
    if found is not None:
        return found
    # SQLAlchemy 2.0 releases before in_greenlet(): its greenlets are of one class.
    from sqlalchemy.util._concurrency_py3k import (  # type: ignore[import-not-found,unused-ignore]
        _AsyncIoGreenlet,
        getcurrent,
    )

    def in_greenlet() -> bool:
        return isinstance(getcurrent(), _AsyncIoGreenlet)

    return in_greenlet


# True inside SQLAlchemy's asyncio greenlet, on the event loop's thread.
in_async_greenlet = _in_greenlet_test()
# SQLAlchemy 2.1 names it await_; await_only stays as an alias until 2.2.
_await: Callable[[Any], Any] = getattr(concurrency, "await_", None) or concurrency.await_only

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _workers() -> ThreadPoolExecutor:
    global _executor
    executor = _executor
    if executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(
                    OFF_LOOP_WORKERS, thread_name_prefix="sqla-envelope-io"
                )
            executor = _executor
    return executor


def off_loop(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, on a worker thread while the event loop runs if called from its greenlet.

    Exceptions reach the caller as raised, their type unchanged. ``fn`` runs in a
    copy of the caller's context, so audit listeners still see the task's
    contextvars (a request id). If the waiting task is cancelled, ``fn`` does not
    start, or if it has, runs to its end (a KMS request cannot be interrupted)
    and what it caches is kept.
    """
    if not in_async_greenlet():
        return fn(*args)
    future = _workers().submit(contextvars.copy_context().run, fn, *args)
    result: _T = _await(asyncio.wrap_future(future))
    return result


class OffLoopKeyCache(KeyCache[V]):
    """A KeyCache whose miss path runs off the event loop when it is called from there.

    The whole miss path moves, not only the keyring call inside it: a task that
    leads the unwrap of a data key and waits for KMS on the loop lets another task
    run, and that one, missing on the same key, would wait for the leader's
    result on the loop's thread, blocking the loop the leader needs to finish.
    Off the loop, leader and followers wait on worker threads. Hits stay inline.
    """

    def load(self, key: Hashable, load: Callable[..., V], *args: Any) -> V:
        if in_async_greenlet():
            return off_loop(super().load, key, load, *args)
        return super().load(key, load, *args)


def _forget_workers_in_child() -> None:
    # The parent's workers do not exist in a child, yet their executor would count
    # them as idle and queue work that nothing runs.
    global _executor, _executor_lock
    _executor, _executor_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_in_child)
