"""Per-thread database connections: opened on a thread's first use, closed when it ends.

Both recorders keep one connection per thread; this is the one place that closes them.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_Alive = dict[int, "weakref.finalize[Any, Any]"]


class _Holder(Generic[T]):
    """What a thread's slot holds. When the thread ends its thread-local slot is cleared,
    the holder is collected and its finalizer closes the resource."""

    __slots__ = ("__weakref__", "finalizer", "resource")

    def __init__(self, resource: T) -> None:
        self.resource = resource
        self.finalizer: weakref.finalize[Any, Any] | None = None


def _finish(alive: _Alive, lock: threading.Lock, key: int, close: Any, resource: Any) -> None:
    # No reference to the owner: a store dropped without close() can still be collected.
    with lock:
        alive.pop(key, None)
    close(resource)


class PerThread(Generic[T]):
    """One resource per thread, from `open()` on first use; `close(resource)` runs when its
    thread ends, on `discard()` from that thread, or for every thread on `close_all()`."""

    def __init__(self, open: Callable[[], T], close: Callable[[T], object]) -> None:
        self._open = open
        self._close = close
        self._local = threading.local()
        self._alive: _Alive = {}
        self._lock = threading.Lock()
        self._keys = itertools.count()

    def get(self) -> T:
        holder: _Holder[T] | None = getattr(self._local, "holder", None)
        if holder is not None:
            return holder.resource
        resource = self._open()
        holder = _Holder(resource)
        key = next(self._keys)
        holder.finalizer = weakref.finalize(
            holder, _finish, self._alive, self._lock, key, self._close, resource
        )
        with self._lock:
            self._alive[key] = holder.finalizer
        self._local.holder = holder
        return resource

    def discard(self) -> None:
        """Close this thread's resource now (a broken connection); `get()` opens another."""
        holder: _Holder[T] | None = getattr(self._local, "holder", None)
        self._local.holder = None
        if holder is not None and holder.finalizer is not None:
            holder.finalizer()

    def close_all(self) -> None:
        """Close every thread's resource (the store is being closed)."""
        with self._lock:
            alive = list(self._alive.values())
        for finalizer in alive:
            finalizer()
        self._local = threading.local()

    def __len__(self) -> int:
        """How many resources are open (threads that used one and have not ended)."""
        return len(self._alive)
