"""Durable per-session storage: an append-only op log with length + CRC32 framed records, and metadata.

Layout under the data directory::

    sessions/<session_id>/meta.json   session metadata (written atomically: temp file, fsync, rename)
    sessions/<session_id>/ops.log     records: 4-byte little-endian payload length, 4-byte CRC32 of the
                                      payload, then the payload (msgpack of one log record dict)

`OpLog.append` returns only after the record is on disk (write + fsync), so an op is acknowledged only once
it survives a crash. Opening a log replays it and truncates a torn tail (a short header, a short payload or a
CRC mismatch from a write cut off by a crash); records after a corrupt one cannot be trusted and are dropped
with it.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 256 * 1024 * 1024  # a length beyond this is corruption, not a record


class LogCorruption(Exception):
    """A log file cannot be read at all (not raised for a torn tail, which is repaired)."""


@dataclass
class ReplayResult:
    records: list[dict[str, Any]]
    truncated_bytes: int  # bytes cut from a torn or corrupt tail


def encode_record(record: dict[str, Any]) -> bytes:
    """One framed record: length, CRC32, msgpack payload."""
    payload = msgpack.packb(record, use_bin_type=True)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse a log; returns (records, length of the valid prefix in bytes)."""
    data = path.read_bytes() if path.exists() else b""
    records: list[dict[str, Any]] = []
    pos = 0
    while pos + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, pos)
        start = pos + HEADER.size
        end = start + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            break
        if not isinstance(record, dict):
            break
        records.append(record)
        pos = end
    return records, pos


class OpLog:
    """An open append-only log file. Thread-safe; `append` blocks until the record is fsynced."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._lock = threading.Lock()
        self._file: Any = None

    def open(self) -> ReplayResult:
        """Replay existing records, truncate a torn tail and open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records, valid = read_records(self.path)
        size = self.path.stat().st_size if self.path.exists() else 0
        if valid < size:
            log.warning("%s: truncating %d bytes of torn or corrupt tail", self.path, size - valid)
            with open(self.path, "r+b") as f:
                f.truncate(valid)
                f.flush()
                os.fsync(f.fileno())
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held open for the session's life
        _fsync_dir(self.path.parent)
        return ReplayResult(records, size - valid)

    def append(self, record: dict[str, Any]) -> None:
        frame = encode_record(record)
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"{self.path}: log is closed")
            view = memoryview(frame)
            while view:  # raw file writes may be partial
                view = view[self._file.write(view):]
            if self._fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                if self._fsync:
                    os.fsync(self._file.fileno())
                self._file.close()
                self._file = None


def _fsync_dir(path: Path) -> None:
    # the directory entry of a new file must be durable too
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON durably: temp file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


class SessionStore:
    """Where sessions live on disk (`--data DIR`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sessions_dir = self.root / "sessions"

    def session_dir(self, session_id: str) -> Path:
        return self.sessions_dir / session_id

    def save_meta(self, session_id: str, meta: dict[str, Any]) -> None:
        write_json_atomic(self.session_dir(session_id) / "meta.json", meta)

    def open_log(self, session_id: str) -> tuple[OpLog, ReplayResult]:
        oplog = OpLog(self.session_dir(session_id) / "ops.log")
        return oplog, oplog.open()

    def stored_sessions(self) -> list[tuple[str, dict[str, Any]]]:
        """(session_id, meta) of every session with readable metadata, oldest first."""
        found: list[tuple[str, dict[str, Any]]] = []
        if not self.sessions_dir.is_dir():
            return found
        for directory in sorted(self.sessions_dir.iterdir()):
            meta_path = directory / "meta.json"
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("skipping %s: unreadable session metadata (%s)", directory, exc)
                continue
            found.append((directory.name, meta))
        found.sort(key=lambda item: item[1].get("created", 0))
        return found
