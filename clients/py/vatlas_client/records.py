"""Plain typed records the client returns, built from the wire messages."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from vatlas_wire.v1 import bundles_pb2, edits_pb2, render_pb2, sessions_pb2

from .images import decode_to_array


@dataclass(frozen=True)
class Roi:
    """The editable region (ROI), in pixels of the bundle's frames.

    `polygons` are the regions as marked on `ref_frame`; `visible[t]` is the box (x, y, w, h) of the pixels of
    frame t where the region shows (w = 0: nowhere on that frame; the list is empty until the bundle is
    loaded). Edits lying entirely outside the region of their frame are refused.
    """

    ref_frame: int
    polygons: list[list[tuple[float, float]]]
    visible: list[tuple[int, int, int, int]]

    @classmethod
    def from_proto(cls, msg: bundles_pb2.Roi) -> Roi:
        return cls(msg.ref_frame, [[(p.x, p.y) for p in poly.points] for poly in msg.polygons],
                   [(b.x, b.y, b.width, b.height) for b in msg.visible])

    def box(self, frame: int | None = None) -> tuple[int, int, int, int] | None:
        """Where the region shows on `frame` (default: the reference frame); None where it does not or when
        the boxes are unknown."""
        frame = self.ref_frame if frame is None else frame
        if not 0 <= frame < len(self.visible) or self.visible[frame][2] == 0:
            return None
        return self.visible[frame]

    def centre(self, frame: int | None = None) -> tuple[float, float] | None:
        """A point to place an edit at on `frame`: the centre of its visible box, or on the reference frame
        without boxes, the mean of the polygons' vertices. None where the region does not show."""
        box = self.box(frame)
        if box is not None:
            return box[0] + box[2] / 2.0, box[1] + box[3] / 2.0
        pts = [p for poly in self.polygons for p in poly]
        if self.visible or (frame is not None and frame != self.ref_frame) or not pts:
            return None
        return sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)


@dataclass(frozen=True)
class BundleInfo:
    """A fitted bundle the server knows (`loaded` = in GPU memory now; `roi`: its editable region)."""

    name: str
    loaded: bool
    frames: int
    width: int
    height: int
    fps: float
    ref_frame: int
    atlas_size: int
    metrics: dict[str, Any]
    file_bytes: int
    roi: Roi

    @classmethod
    def from_proto(cls, msg: bundles_pb2.BundleInfo) -> BundleInfo:
        try:
            metrics = json.loads(msg.metrics_json) if msg.metrics_json else {}
        except json.JSONDecodeError:  # display-only field: keep the text rather than fail the call
            metrics = {"raw": msg.metrics_json}
        return cls(msg.name, msg.loaded, msg.frames, msg.width, msg.height, msg.fps, msg.ref_frame,
                   msg.atlas_size, metrics, msg.file_bytes, Roi.from_proto(msg.roi))


@dataclass(frozen=True)
class SessionInfo:
    """A session: its id, bundle, the join token others need, the last sequence number, participant count."""

    session_id: str
    bundle: str
    join_token: str
    seq: int
    participants: int

    @classmethod
    def from_proto(cls, msg: sessions_pb2.SessionInfo) -> SessionInfo:
        return cls(msg.session_id, msg.bundle, msg.join_token, msg.seq, msg.participants)


@dataclass(frozen=True)
class Participant:
    """One person (or script) in a session, with their presence."""

    participant_id: str
    name: str
    color: str
    cursor: tuple[float, float] | None
    frame: int
    tool: str

    @classmethod
    def from_proto(cls, msg: sessions_pb2.Participant) -> Participant:
        cursor = (msg.cursor.x, msg.cursor.y) if msg.HasField("cursor") else None
        return cls(msg.participant_id, msg.name, msg.color, cursor, msg.frame, msg.tool)


@dataclass(frozen=True)
class OpEvent:
    """An op someone applied to the session, with its server sequence number."""

    seq: int
    participant_id: str
    op: edits_pb2.EditOp


@dataclass(frozen=True)
class PresenceEvent:
    """A participant's presence changed, or they left (`left`)."""

    participant: Participant
    left: bool


@dataclass(frozen=True)
class FitProgress:
    """One step of a running fit; `bundle` is set on the last (`done`)."""

    stage: str
    fraction: float
    iteration: int
    losses: dict[str, float]
    eta_seconds: float
    done: bool
    bundle: BundleInfo | None
    message: str
    fit_id: str = ""  # for `cancel_fit`

    @classmethod
    def from_proto(cls, msg: bundles_pb2.FitProgress) -> FitProgress:
        bundle = BundleInfo.from_proto(msg.bundle) if msg.HasField("bundle") else None
        return cls(msg.stage, msg.fraction, msg.iteration, dict(msg.losses), msg.eta_seconds, msg.done, bundle,
                   msg.message, msg.fit_id)


@dataclass(frozen=True)
class ExportProgress:
    """Progress of an export: server-side encoding (`fraction`), then the download (`received_bytes`)."""

    stage: str
    fraction: float
    received_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Frame:
    """A rendered frame as sent by the server; convert with `to_numpy()` / `to_pil()`."""

    frame: int
    format: str
    width: int
    height: int
    data: bytes = field(repr=False)
    seq: int
    request_id: int
    render_ms: float

    @classmethod
    def from_proto(cls, msg: render_pb2.RenderedFrame) -> Frame:
        return cls(msg.frame, msg.format, msg.width, msg.height, msg.data, msg.seq, msg.request_id, msg.render_ms)

    def to_numpy(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return decode_to_array(self.data, self.format, self.width, self.height)

    def to_pil(self) -> Image.Image:
        """A PIL RGB image."""
        if self.format == "raw":
            return Image.fromarray(self.to_numpy())
        img = Image.open(io.BytesIO(self.data))
        return img.convert("RGB")


class Ack(int):
    """The server sequence number an op was accepted at (an int), carrying the op's id as `.op_id`; also a handle
    on the object the op made: ``s = session.stroke(...)``, then ``s.update(width=8)``, ``s.delete()`` (through
    the session that sent it: on an `AsyncSession` these are coroutines)."""

    op_id: str
    session: Any

    def __new__(cls, seq: int, op_id: str, session: Any = None) -> Ack:
        ack = super().__new__(cls, seq)
        ack.op_id = op_id
        ack.session = session
        return ack

    def on(self, session: Any) -> Ack:
        """The same ack, as a handle through `session`."""
        return Ack(int(self), self.op_id, session)

    def _through(self) -> Any:
        if self.session is None or not self.op_id:
            raise ValueError(f"{self!r} is no handle on an object (an undo, a redo, or not sent by a session)")
        return self.session

    def update(self, **properties: Any) -> Any:
        """Set properties of the object this op made (as `Session.update`)."""
        return self._through().update(self.op_id, **properties)

    def delete(self) -> Any:
        """Remove the object this op made."""
        return self._through().delete(self.op_id)

    def restore(self) -> Any:
        """Bring the object back after a delete."""
        return self._through().restore(self.op_id)

    def set_visible(self, visible: bool) -> Any:
        """Show or hide the object."""
        return self._through().set_visible(self.op_id, visible)

    def __repr__(self) -> str:
        return f"Ack(seq={int(self)}, op_id={self.op_id!r})"

    __str__ = int.__repr__
