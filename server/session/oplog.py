"""Durable per-session storage: an append-only op log with length + CRC32 framed records, and metadata.

Layout under the data directory::

    sessions/<session_id>/meta.json   session metadata (written atomically: temp file, fsync, rename)
    sessions/<session_id>/ops.log     records: 4-byte little-endian payload length, 4-byte CRC32 of the
                                      payload, then the payload (msgpack of one log record dict)
    sessions/<session_id>/snapshot    the document at sequence number S, one record framed the same way
    sessions/<session_id>/snapshot.prev   the snapshot before it (its fallback)

`OpLog.append` returns only after the record is on disk (write + fsync), so an op is acknowledged only once
it survives a crash. A failed write or fsync (full disk, I/O error) cuts the file back to the end of the last
good record before the error reaches the caller, so a rejected op leaves no bytes behind and later records
are not stranded behind a partial one.

Opening a log replays it. A torn tail (a short header, a short payload or a CRC mismatch after the last
valid record: a write cut off by a crash) is truncated. Damage *inside* the log (a flipped bit, a zeroed
page) does not end the replay: the reader resyncs to the next offset where a whole record with a matching
CRC and a later sequence number starts, the original file is kept beside the log as
``ops.log.damaged-<UTC time>``, the log is rewritten with every record that survived, and the loss is logged
at ERROR level (`ReplayResult.damage` says what was lost).

Snapshots bound replay time and memory (L7): every `compact_every` ops the session writes the document as
of seq S (atomically: temp file, fsync, rename; the older snapshot becomes ``snapshot.prev``) and rewrites the
log to hold only the records after the *previous* snapshot. So the log always reaches back to the fallback
snapshot: a damaged ``snapshot`` costs nothing (``snapshot.prev`` plus the log rebuild it), and a client can
resume from any seq after the fallback. A crash between the steps leaves either the old files or records the
snapshot already holds (skipped on replay).

Why a framed file and not SQLite: every record carries its own CRC32, so a flipped bit is detected and costs
exactly the records it touches; SQLite as shipped with Python has no page checksums (a flipped bit in a row is
read back silently, one in a b-tree page can make the whole database unreadable). Logs of earlier versions
are the same format and load unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 256 * 1024 * 1024  # a length beyond this is corruption, not a record
MAX_SNAPSHOT_BYTES = 1 << 32  # a snapshot holds a whole document (images as uploaded)
DAMAGED_SUFFIX = ".damaged-"
SNAPSHOT = "snapshot"
PREVIOUS_SNAPSHOT = "snapshot.prev"


class LogCorruption(Exception):
    """A log file cannot be read at all (not raised for a torn tail, which is repaired)."""


@dataclass
class Damage:
    """What a damaged log lost: byte ranges skipped, sequence numbers missing, where the original is kept."""

    ranges: list[tuple[int, int]]
    missing_seqs: list[int]
    quarantined: Path | None = None

    def describe(self) -> str:
        spans = ", ".join(f"{a}..{b}" for a, b in self.ranges[:5]) + (" ..." if len(self.ranges) > 5 else "")
        missing = _seq_ranges(self.missing_seqs)
        return (f"{sum(b - a for a, b in self.ranges)} damaged bytes ({spans}); ops lost: "
                f"{missing or 'none (seq numbers are contiguous)'}")


@dataclass
class ReplayResult:
    records: list[dict[str, Any]]
    truncated_bytes: int  # bytes cut from a torn or corrupt tail
    damage: Damage | None = None  # set when records inside the log were unreadable (the log was repaired)


@dataclass
class LogScan:
    """A parsed log: the records, the clean prefix, the damaged ranges skipped and where the last record ends."""

    records: list[dict[str, Any]]
    prefix: int  # bytes before the first problem (the whole file when it is clean)
    end: int  # end of the last valid record
    damaged: list[tuple[int, int]] = field(default_factory=list)


def encode_record(record: dict[str, Any]) -> bytes:
    """One framed record: length, CRC32, msgpack payload."""
    payload = msgpack.packb(record, use_bin_type=True)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _record_at(data: bytes | memoryview, pos: int, after_seq: int | None,
               max_bytes: int = MAX_RECORD_BYTES) -> tuple[dict[str, Any] | None, int]:
    """The record framed at `pos` and its end, or (None, pos) when there is none."""
    if pos + HEADER.size > len(data):
        return None, pos
    length, crc = HEADER.unpack_from(data, pos)
    start = pos + HEADER.size
    end = start + length
    # length 0 is never written (crc32(b"") == 0 would make a zeroed page look like records)
    if length == 0 or length > max_bytes or end > len(data):
        return None, pos
    payload = bytes(data[start:end])
    if zlib.crc32(payload) != crc:
        return None, pos
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None, pos
    if not isinstance(record, dict):
        return None, pos
    seq = record.get("seq")
    if after_seq is not None and (not isinstance(seq, int) or seq <= after_seq):
        return None, pos  # a resync candidate must continue the sequence
    return record, end


def scan_records(data: bytes) -> LogScan:
    """Parse a log, resyncing past damaged bytes to the next whole record that continues the sequence."""
    view = memoryview(data)
    records: list[dict[str, Any]] = []
    damaged: list[tuple[int, int]] = []
    prefix: int | None = None
    pos = 0
    last_seq: int | None = None
    while pos + HEADER.size <= len(data):
        record, end = _record_at(view, pos, None)
        if record is None:
            if prefix is None:
                prefix = pos
            resync = next((q for q in range(pos + 1, len(data) - HEADER.size + 1)
                           if _record_at(view, q, last_seq if last_seq is not None else -1)[0] is not None), None)
            if resync is None:
                break  # nothing valid follows: a torn or corrupt tail
            damaged.append((pos, resync))
            pos = resync
            continue
        records.append(record)
        seq = record.get("seq")
        last_seq = seq if isinstance(seq, int) else last_seq
        pos = end
    return LogScan(records, pos if prefix is None else prefix, pos, damaged)


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Parse a log; returns (records, length of the clean prefix in bytes: the file size when undamaged)."""
    scan = scan_records(path.read_bytes() if path.exists() else b"")
    return scan.records, scan.prefix


def _seq_ranges(seqs: list[int]) -> str:
    parts: list[str] = []
    for s in seqs:
        if parts and parts[-1].split("-")[-1] == str(s - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{s}"
        else:
            parts.append(str(s))
    text = ", ".join(parts[:10])
    return text + (" ..." if len(parts) > 10 else "")


def _missing_seqs(records: list[dict[str, Any]]) -> list[int]:
    seqs = [r.get("seq") for r in records if isinstance(r.get("seq"), int)]
    missing: list[int] = []
    for a, b in zip(seqs, seqs[1:], strict=False):
        missing.extend(range(a + 1, b))
    return missing[:100_000]


class OpLog:
    """An open append-only log file. Thread-safe; `append` blocks until the record is fsynced."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._lock = threading.Lock()
        self._file: Any = None
        self._size = 0  # end of the last durable record: where a failed append is cut back to
        self._dirty = False  # a failed append could not be cut back yet

    def open(self) -> ReplayResult:
        """Replay existing records, repair damage (see the module docstring) and open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        scan = scan_records(data)
        damage = None
        if scan.damaged:
            damage = Damage(scan.damaged, _missing_seqs(scan.records))
            damage.quarantined = self._rewrite(scan.records)
            log.error("DAMAGED OP LOG %s: %s; %d records recovered; the original is kept at %s", self.path,
                      damage.describe(), len(scan.records), damage.quarantined)
            valid = self.path.stat().st_size
            cut = len(data) - scan.end
        else:
            valid, cut = scan.end, len(data) - scan.end
            if cut:
                log.warning("%s: truncating %d bytes of torn or corrupt tail", self.path, cut)
                with open(self.path, "r+b") as f:
                    f.truncate(valid)
                    f.flush()
                    os.fsync(f.fileno())
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held open for the session's life
        self._size = valid
        _fsync_dir(self.path.parent)
        return ReplayResult(scan.records, cut, damage)

    def _rewrite(self, records: list[dict[str, Any]]) -> Path:
        """Keep the damaged file beside the log and replace the log by its surviving records (atomically)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        quarantine = self.path.with_name(f"{self.path.name}{DAMAGED_SUFFIX}{stamp}")
        n = 1
        while quarantine.exists():
            quarantine = self.path.with_name(f"{self.path.name}{DAMAGED_SUFFIX}{stamp}.{n}")
            n += 1
        shutil.copyfile(self.path, quarantine)
        tmp = self.path.with_name(self.path.name + ".recovered")
        with open(tmp, "wb") as f:
            for record in records:
                f.write(encode_record(record))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        _fsync_dir(self.path.parent)
        return quarantine

    def append(self, record: dict[str, Any]) -> int:
        """Write and fsync one record; returns its offset (for `rollback`). On OSError nothing stays behind."""
        frame = encode_record(record)
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"{self.path}: log is closed")
            if self._dirty:
                self._cut_back()  # an earlier failure left bytes behind: remove them first (or fail again)
            offset = self._size
            try:
                view = memoryview(frame)
                while view:  # raw file writes may be partial
                    view = view[self._file.write(view):]
                if self._fsync:
                    os.fsync(self._file.fileno())
            except OSError:
                try:
                    self._cut_back()
                except OSError as exc:
                    self._dirty = True
                    log.error("%s: cannot cut a failed append back to %d bytes: %s", self.path, self._size, exc)
                raise
            self._size = offset + len(frame)
            return offset

    def rollback(self, offset: int) -> None:
        """Remove the last appended record (written at `offset`): the op it holds was not applied."""
        with self._lock:
            if self._file is None or offset > self._size:
                return
            self._size = offset
            try:
                self._cut_back()
            except OSError:
                self._dirty = True
                raise

    def compact(self, records: list[dict[str, Any]]) -> None:
        """Replace the log by `records` (what it holds after the fallback snapshot), atomically, and go on
        appending to the new file. On OSError the old log stays as it was."""
        with self._lock:
            if self._file is None:
                raise RuntimeError(f"{self.path}: log is closed")
            tmp = self.path.with_name(self.path.name + ".compact")
            try:
                with open(tmp, "wb") as f:
                    for record in records:
                        f.write(encode_record(record))
                    f.flush()
                    if self._fsync:
                        os.fsync(f.fileno())
                tmp.replace(self.path)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            if self._fsync:
                _fsync_dir(self.path.parent)
            self._file.close()
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held open for the session's life
            self._size = self.path.stat().st_size
            self._dirty = False

    def _cut_back(self) -> None:
        # ftruncate frees what a partial write took, so it works on a full disk
        os.ftruncate(self._file.fileno(), self._size)
        os.fsync(self._file.fileno())
        self._dirty = False

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


@dataclass
class SnapshotRead:
    """The newest readable snapshot of a session (None: none yet, or none readable) and what was damaged."""

    state: dict[str, Any] | None
    name: str = ""  # "current" or "previous": which file it came from
    damaged: list[Path] = field(default_factory=list)  # quarantined copies of unreadable snapshots


def write_snapshot(directory: Path, state: dict[str, Any], *, fsync: bool = True) -> None:
    """Write `state` as the session's snapshot; the one it replaces becomes the fallback."""
    frame = encode_record(state)
    current, previous = directory / SNAPSHOT, directory / PREVIOUS_SNAPSHOT
    tmp = directory / (SNAPSHOT + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(frame)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if current.exists():
            current.replace(previous)  # a crash right here: the fallback and the log still hold everything
        tmp.replace(current)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(directory)


def read_snapshot(directory: Path) -> SnapshotRead:
    """The newest snapshot whose CRC holds; an unreadable one is quarantined and reported."""
    found = SnapshotRead(None)
    for name, which in ((SNAPSHOT, "current"), (PREVIOUS_SNAPSHOT, "previous")):
        path = directory / name
        if not path.exists():
            continue
        data = path.read_bytes()
        record, end = _record_at(data, 0, None, MAX_SNAPSHOT_BYTES)
        if record is not None and end == len(data) and isinstance(record.get("seq"), int):
            found.state, found.name = record, which
            break
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        quarantine = path.with_name(f"{name}{DAMAGED_SUFFIX}{stamp}")
        path.replace(quarantine)
        found.damaged.append(quarantine)
        log.error("DAMAGED SNAPSHOT %s: the CRC does not match; kept at %s", path, quarantine)
    return found


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

    def write_snapshot(self, session_id: str, state: dict[str, Any]) -> None:
        write_snapshot(self.session_dir(session_id), state)

    def read_snapshot(self, session_id: str) -> SnapshotRead:
        return read_snapshot(self.session_dir(session_id))

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
