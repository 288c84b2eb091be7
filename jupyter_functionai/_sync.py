"""Blocking twins of async classes, generated from them (the pattern of
``modal-labs/synchronicity``): each API method is written once, as a
coroutine; the blocking class declares ``name = blocking(AsyncCls.name)``,
which runs that coroutine on a :class:`Portal` (an event loop on a daemon
thread) and waits for it.  The body, signature, docstring and return type come
from the coroutine; a subclass of :class:`Blocking` that misses one of its
twin's public coroutines fails when it is defined.

A blocking call works from any thread, including one whose own event loop is
running (a kernel's): it blocks that thread, never the portal's loop.  Calling
one from the portal's own thread raises instead of deadlocking.  A
``KeyboardInterrupt`` in the waiting thread cancels the coroutine.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import types
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")

__all__ = ["Blocking", "Portal", "blocking", "public_coroutines", "shared_portal"]


class Portal:
    """An event loop running on its own daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal's loop; block until it is done and return
        its result (or raise its exception)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking call on the thread of its own event loop would deadlock: await the async API there")
        if not self.alive():
            coro.close()
            raise RuntimeError(f"the event loop of {self.thread.name} is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt in this thread: stop the call too
            raise

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop and its thread (calls still running are abandoned)."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


_SHARED: Portal | None = None
_SHARED_LOCK = threading.Lock()


def shared_portal() -> Portal:
    """The portal of this process that blocking HTTP clients share (started on
    first use, again in a forked child)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or not _SHARED.alive():
            _SHARED = Portal("functionai-client")
        return _SHARED


def _after_fork() -> None:  # the parent's thread does not exist in the child
    global _SHARED, _SHARED_LOCK
    _SHARED, _SHARED_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class _AsyncMethod(Protocol[P, R_co]):
    """An ``async def`` method: ``(self, *args) -> Coroutine[..., R]``."""

    def __call__(_, self: Any, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...


class blocking(Generic[P, R]):  # used like a decorator, hence the lower case
    """The blocking twin of the coroutine method ``fn``: on an instance of a
    :class:`Blocking` class it is a method with ``fn``'s parameters that
    returns what ``fn``'s coroutine returns."""

    def __init__(self, fn: _AsyncMethod[P, R]) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"blocking() needs an async def method, not {fn!r}")
        self.fn = fn
        self.__name__: str = getattr(fn, "__name__", "")
        self.__qualname__: str = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__wrapped__ = fn
        name = self.__name__

        @functools.wraps(fn)
        def method(obj: Blocking, /, *args: Any, **kwargs: Any) -> Any:
            return obj._portal.run(getattr(obj._impl, name)(*args, **kwargs))

        self._method = method

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self.__name__:
            raise TypeError(f"{owner.__name__}.{name} = blocking({self.__qualname__}): the names differ")
        self._method.__qualname__ = self.__qualname__ = f"{owner.__qualname__}.{name}"

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Callable[Concatenate[Any, P], R]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Callable[P, R]: ...
    def __get__(self, obj: object, owner: type | None = None) -> Any:
        """On the class, the plain function (its ``__wrapped__`` is the
        coroutine function); on an instance, the bound method."""
        return self._method if obj is None else types.MethodType(self._method, obj)


def public_coroutines(cls: type) -> dict[str, Any]:
    """The public ``async def`` methods of ``cls`` (with those it inherits)."""
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_") and inspect.iscoroutinefunction(getattr(cls, n))}


class Blocking:
    """Base of a blocking class generated from the async class ``twin``
    (``class Client(Blocking, twin=AsyncClient)``): an instance holds the
    async object in ``_impl`` and runs its coroutines on ``_portal``."""

    twin: ClassVar[type]
    _impl: Any

    def __init_subclass__(cls, *, twin: type, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.twin = twin
        made = {n: v.fn for n, v in vars(cls).items() if isinstance(v, blocking)}
        wanted = public_coroutines(twin)
        missing = sorted(n for n in wanted if made.get(n) is not wanted[n])
        extra = sorted(set(made) - set(wanted))
        if missing or extra:
            raise TypeError(f"{cls.__name__} must declare `name = blocking({twin.__name__}.name)` for each public coroutine of {twin.__name__}: missing {missing}, not coroutines of it {extra}")

    @property
    def _portal(self) -> Portal:
        return shared_portal()
