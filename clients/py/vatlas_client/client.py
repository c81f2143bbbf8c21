"""Synchronous client: `Client` and `Session`, the asyncio client (aio.py) run on a private loop thread.

Every method is its async original, blocking until that has finished on the loop thread (same signature, same
docstring); iterators fetch each item there. Callbacks (`progress=`) run on that thread too: a blocking call of
the same client from inside one raises RuntimeError (call it from another thread, or use `AsyncClient`).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._io import IoLoop
from .aio import AsyncClient, AsyncSession
from .errors import VatlasError
from .records import Ack, Participant, SessionInfo

P = ParamSpec("P")
R = TypeVar("R")


def _blocking(method: Callable[Concatenate[Any, P], Awaitable[R]]) -> Callable[Concatenate[Any, P], R]:
    """The sync method of an async one: run on the owner's loop, its result (or exception) returned here."""
    def call(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._io.run(method(self._async, *args, **kwargs))
    return functools.wraps(method)(call)


def _iterating(method: Callable[Concatenate[Any, P], AsyncIterator[R]]) -> Callable[Concatenate[Any, P], Iterator[R]]:
    """The sync method of an async generator: a sync iterator over it."""
    def call(self: Any, *args: P.args, **kwargs: P.kwargs) -> Iterator[R]:
        return self._io.iterate(method(self._async, *args, **kwargs))
    return functools.wraps(method)(call)


def _acking(method: Callable[Concatenate[Any, P], Awaitable[Ack]]) -> Callable[Concatenate[Any, P], Ack]:
    """The sync method of an op: its Ack, a handle through this sync session."""
    def call(self: Session, *args: P.args, **kwargs: P.kwargs) -> Ack:
        return self._io.run(method(self._async, *args, **kwargs)).on(self)
    return functools.wraps(method)(call)


def _joining(method: Callable[Concatenate[Any, P], Awaitable[AsyncSession]]) -> Callable[Concatenate[Any, P], Session]:
    """The sync method of a join: the AsyncSession it makes, in its sync shell."""
    def call(self: Client, *args: P.args, **kwargs: P.kwargs) -> Session:
        return Session(self, self._io.run(method(self._async, *args, **kwargs)))
    return functools.wraps(method)(call)


def _state(name: str) -> property:
    """A read-only property mirrored from the AsyncSession (plain reads: safe from any thread)."""
    original = getattr(AsyncSession, name)
    return property(lambda self: getattr(self._async, name), doc=original.__doc__)


class Client:
    """A connection to a vatlas server over gRPC: ``with Client("localhost:50051", token="...") as client:``.

    Unary calls get a deadline of `timeout` seconds; calls failing with UNAVAILABLE are retried by gRPC itself
    (`retries`, at most 4); session and playback streams reconnect for up to `reconnect_timeout` seconds.
    """

    def __init__(self, address: str, token: str | None = None, *, timeout: float = 30.0, retries: int = 4,
                 reconnect_timeout: float = 30.0, options: Sequence[tuple[str, Any]] = ()) -> None:
        self._io = IoLoop(f"vatlas-client-{address}")

        async def connect() -> AsyncClient:  # the channel belongs to the loop it is made on
            return AsyncClient(address, token, timeout=timeout, retries=retries,
                               reconnect_timeout=reconnect_timeout, options=options)

        self._async = self._io.run(connect())
        self.address, self.timeout, self.retries = address, timeout, retries
        self.reconnect_timeout = reconnect_timeout

    def close(self) -> None:
        """Leave every session still open on this client, then close the channel."""
        try:
            self._io.run(self._async.close())
        finally:
            self._io.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    list_bundles = _blocking(AsyncClient.list_bundles)
    load_bundle = _blocking(AsyncClient.load_bundle)
    bundle_info = _blocking(AsyncClient.bundle_info)
    upload_video = _blocking(AsyncClient.upload_video)
    fit_progress = _iterating(AsyncClient.fit_progress)
    fit = _blocking(AsyncClient.fit)
    cancel_fit = _blocking(AsyncClient.cancel_fit)

    create_session = _blocking(AsyncClient.create_session)
    list_sessions = _blocking(AsyncClient.list_sessions)
    join = _joining(AsyncClient.join)
    open_session = _joining(AsyncClient.open_session)

    render_frame = _blocking(AsyncClient.render_frame)
    render = _blocking(AsyncClient.render)
    render_image = _blocking(AsyncClient.render_image)
    render_bytes = _blocking(AsyncClient.render_bytes)
    playback = _iterating(AsyncClient.playback)
    export_events = _iterating(AsyncClient.export_events)
    export = _blocking(AsyncClient.export)


class Session:
    """One participant's live connection to a session, made by `Client.join`: an `AsyncSession` on the client's
    loop thread (acknowledgements resolve the op methods, which return the accepted sequence number as an `Ack`
    or raise `OpRejected`; others' ops and presence go to `events()`; a dropped stream rejoins and re-sends)."""

    def __init__(self, client: Client, session: AsyncSession) -> None:
        self._client = client
        self._io = client._io
        self._async = session

    session_id = _state("session_id")
    join_token = _state("join_token")
    participant_id = _state("participant_id")
    resume_key = _state("resume_key")
    seq = _state("seq")
    info: SessionInfo | None = _state("info")  # type: ignore[assignment]
    document = _state("document")
    participants: dict[str, Participant] = _state("participants")  # type: ignore[assignment]
    reconnects = _state("reconnects")
    closed = _state("closed")
    errors: list[VatlasError] = _state("errors")  # type: ignore[assignment]
    roi = _blocking(AsyncSession.roi)

    def leave(self, timeout: float = 5.0) -> None:
        """Leave the session and stop its reader (a closed client has left its sessions already)."""
        if not self._io.closed:
            self._io.run(self._async.leave(timeout))

    close = leave

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()

    send = _acking(AsyncSession.send)
    stroke = _acking(AsyncSession.stroke)
    texture = _acking(AsyncSession.texture)
    adjustment = _acking(AsyncSession.adjustment)
    sticker = _acking(AsyncSession.sticker)
    update = _acking(AsyncSession.update)
    delete = _acking(AsyncSession.delete)
    restore = _acking(AsyncSession.restore)
    set_visible = _acking(AsyncSession.set_visible)
    undo = _blocking(AsyncSession.undo)
    redo = _blocking(AsyncSession.redo)
    set_presence = _blocking(AsyncSession.set_presence)

    next_event = _blocking(AsyncSession.next_event)
    events = _iterating(AsyncSession.events)
    wait_for = _blocking(AsyncSession.wait_for)

    render = _blocking(AsyncSession.render)
    render_frame = _blocking(AsyncSession.render_frame)
    export = _blocking(AsyncSession.export)
