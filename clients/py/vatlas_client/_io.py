"""A private asyncio loop on a daemon thread: the sync client runs the async one (aio.py) on it, so both share
one implementation (viser's public API is synchronous over one background loop the same way)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from .errors import VatlasError

T = TypeVar("T")


class IoLoop:
    """Runs coroutines and async iterators of one sync client on its own loop thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()

    @property
    def closed(self) -> bool:
        return not self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result (its exception is raised here)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking vatlas_client call from one of the same client's callbacks: call it "
                               "from another thread, or use AsyncClient there")
        if self.loop.is_closed() or not self._thread.is_alive():
            coro.close()
            raise VatlasError("the client is closed", code="FAILED_PRECONDITION")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator as a sync one, each item fetched on the loop; closing it closes the async one."""
        try:
            while True:
                try:
                    item = self.run(items.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None and self._thread.is_alive():
                with contextlib.suppress(RuntimeError, VatlasError):
                    self.run(aclose())

    def close(self) -> None:
        """Stop the loop (its remaining tasks are cancelled) and wait for its thread."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10.0)
