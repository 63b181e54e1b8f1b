"""The durable inference log: every served prediction, one JSON line each.

Design (what the monitoring job relies on):

- **No lost records.** Each request's records are appended with one ``os.write`` on an
  ``O_APPEND`` file descriptor before the response is sent. Once ``write`` returns the
  bytes are in the kernel, so a ``kill -9`` of the server loses nothing it answered.
  A background thread ``fsync``s every ``fsync_every`` seconds against power loss.
- **No torn records.** One writer per process (its own file, pid in the name), so
  concurrent workers never interleave; within a process a lock serializes writes. A
  reader skips (and counts) a line that is not complete JSON, and a writer that opens
  a file whose last line was cut off starts on a fresh line.
- **Bounded, and no label lost to retention.** Files rotate at ``max_bytes``. Beyond
  ``max_files`` per directory the oldest files are deleted, but only those `modelyard
  harvest` has consumed to their current size (its manifest, ``<log dir>/.harvest/
  manifest.json``, in this directory or its parent when each pod writes a subfolder).
  Unharvested files are kept, up to ``hard_max_files`` (default 4 x ``max_files``); past
  that the oldest is deleted anyway, with an error saying labels may be lost and to run
  `modelyard harvest` more often. No manifest (harvest never ran) means nothing is
  harvested. The manifest is read only when pruning, i.e. at rotation.
- **Cheap.** One syscall per request on the request path, no fsync there.
- **Survives a full disk.** A write that fails (disk full, read-only, I/O error) raises
  ``OSError`` to the caller (the service counts it and answers the prediction anyway);
  what was half written is cut off by a newline before the next record, a rotation that
  failed is retried at the next append, and a failed background fsync is logged, never
  the end of the thread.
- **Private.** The records hold raw inputs: the directory is 0700, the files 0600.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

_DUMP = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
PREFIX = "inference-"
SUFFIX = ".jsonl"
# `modelyard harvest`'s state, in the log folder it reads (monitoring/harvest.py writes it):
# the manifest maps each log file (relative to that folder) to the bytes consumed.
HARVEST_DIR = ".harvest"
MANIFEST = "manifest.json"


class InferenceLog:
    def __init__(
        self,
        directory: Path,
        max_bytes: int = 64 * 1024 * 1024,
        max_files: int = 50,
        fsync_every: float = 1.0,
        hard_max_files: int | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_files = max_files
        # Unharvested files are kept beyond max_files, up to this many.
        self.hard_max_files = max(max_files, hard_max_files or 4 * max_files)
        self._path: Path | None = None
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._seq = 0
        self._dirty = False
        self._torn = False  # a failed write left part of a record: start on a fresh line
        self._closed = threading.Event()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            directory.chmod(0o700)  # created earlier, or by someone else's umask
        except PermissionError:
            log.warning("inference log: cannot make %s private (0700): not its owner", directory)
        try:
            self._open_next()
        except OSError as exc:  # a full disk at start: serve anyway, append says why
            log.error("inference log: cannot open a file in %s: %s", directory, exc)
        self._syncer = threading.Thread(target=self._sync_loop, args=(fsync_every,), daemon=True)
        self._syncer.start()

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append ``records``, one JSON line each, with one ``write`` (more only after a
        short write). Raises OSError when the file system refuses (ENOSPC, EROFS, EIO,
        EFBIG): those records are not logged, and the log goes on at the next call."""
        data = b"".join(orjson.dumps(r, option=_DUMP) for r in records)
        with self._lock:
            if self._fd < 0:
                self._open_next()  # the last rotation failed: try again
            elif self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            if self._torn:
                data = b"\n" + data  # a reader skips the blank line, and the torn one
            written = 0
            try:
                while written < len(data):  # short writes: rare on regular files, not never
                    written += os.write(self._fd, data[written:])
            finally:
                self._size += written
                self._dirty = self._dirty or written > 0
                if written == len(data):
                    self._torn = False
                elif written > 0:
                    self._torn = True

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                try:
                    os.fsync(fd)
                except OSError as exc:
                    log.error("inference log: fsync of %s failed: %s", self._path, exc)
                finally:
                    os.close(fd)

    # -- internals -------------------------------------------------------------------------

    def _open_next(self) -> None:
        self._seq += 1
        name = f"{PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{self._seq:04d}{SUFFIX}"
        path = self.directory / name
        self._path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(self._fd, 0o600)  # the mode above applies only to a new file
        self._size = os.fstat(self._fd).st_size
        self._torn = bool(self._size) and _last_byte(path) != b"\n"  # never glue to it
        try:
            self._prune()
        except OSError as exc:  # pruning frees space; failing to is no reason to stop
            log.warning("inference log: could not prune %s: %s", self.directory, exc)

    def _rotate(self) -> None:
        fd, self._fd = self._fd, -1  # closed even when fsync fails; reopened by append
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._open_next()

    def _prune(self) -> None:
        """Over ``max_files``: delete the oldest files harvest consumed; keep the others up
        to ``hard_max_files``. Only the oldest are candidates: the newest ``max_files`` may
        be other workers' open files, which a harvest may have read to their end."""
        files = sorted(
            (p for p in self.directory.glob(f"{PREFIX}*{SUFFIX}") if p != self._path),
            key=lambda p: (p.stat().st_mtime, p.name),  # as read() orders them
        )
        excess = len(files) + 1 - self.max_files  # + 1: the file just opened
        if excess <= 0:
            return
        consumed = harvested(self.directory)
        kept: list[Path] = []
        for old in files[:excess]:
            if _size(old) <= consumed.get(old.name, -1):
                log.info(
                    "inference log: removing %s (harvested; max_files=%d)", old.name, self.max_files
                )
                old.unlink(missing_ok=True)
            else:
                kept.append(old)
        over = len(files) - (excess - len(kept)) + 1 - self.hard_max_files
        for old in kept[: max(0, over)]:
            log.error(
                "inference log: removing %s before `modelyard harvest` read it (over "
                "hard_max_files=%d): feedback labels of its predictions may be lost. Run "
                "`modelyard harvest` more often (or raise the limits).",
                old.name,
                self.hard_max_files,
            )
            old.unlink(missing_ok=True)

    def _sync_loop(self, every: float) -> None:
        while not self._closed.wait(every):
            with self._lock:
                if not (self._dirty and self._fd >= 0):
                    continue
                fd = os.dup(self._fd)  # fsync outside the lock: requests never wait on the disk
                self._dirty = False
            try:
                os.fsync(fd)
            except OSError as exc:  # an I/O error must not end the thread
                log.error("inference log: fsync of %s failed: %s", self._path, exc)
            finally:
                os.close(fd)


class Health:
    """What a service says about its log: ``ok``, or ``degraded`` from the first refused
    write until one succeeds again (``state``, as /v1/metadata shows it). ``failed`` and
    ``recovered`` return what is worth logging: the first failure and then at most one
    every ``say_every`` seconds, and the end of a degraded spell."""

    def __init__(self, *, say_every: float = 60.0, clock: Any = time.monotonic) -> None:
        self.say_every, self.clock = say_every, clock
        self.state: dict[str, Any] = {"status": "ok"}
        self._said = -float("inf")

    @staticmethod
    def kind(exc: OSError) -> str:
        """The errno's name (ENOSPC, EROFS, EIO...), the metric's label."""
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)

    def failed(self, exc: OSError) -> str | None:
        """Record a refused write; the message to log now, or None (said recently)."""
        kind = self.kind(exc)
        since = self.state.get("since", time.time())
        self.state = {
            "status": "degraded",
            "since": since,
            "last_error": f"{kind}: {exc.strerror or exc}",
        }
        now = self.clock()
        if now - self._said < self.say_every:
            return None
        self._said = now
        return (
            f"inference log: a write failed ({exc}): predictions are answered but not "
            "logged, feedback is refused with 503, until it works again"
        )

    def recovered(self) -> str | None:
        """Record a write that worked; the message to log when it ends a degraded spell."""
        if self.state["status"] == "ok":
            return None
        said = f"inference log: writing again after {self.state['last_error']}"
        self.state = {"status": "ok"}
        return said


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # another worker pruned it first
        return -1


def manifest_path(log_dir: Path) -> Path:
    """Where `modelyard harvest` records what it consumed of the log under ``log_dir``."""
    return log_dir / HARVEST_DIR / MANIFEST


def harvested(directory: Path) -> dict[str, int]:
    """Bytes `modelyard harvest` consumed of each log file in ``directory``, by file name:
    its manifest sits in this directory, or in its parent when each pod writes a subfolder
    of the harvested volume. Empty when harvest never ran, or its manifest is unreadable
    (then every file counts as unharvested: kept, never lost)."""
    for root, prefix in ((directory, ""), (directory.parent, f"{directory.name}/")):
        path = manifest_path(root)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:  # e.g. harvest runs as another user: never fail a request
            log.warning(
                "inference log: cannot read %s (%s): no file counts as harvested", path, exc
            )
            return {}
        try:
            offsets = orjson.loads(raw)["files"]
            return {
                rel[len(prefix) :]: int(offset)
                for rel, offset in offsets.items()
                if rel.startswith(prefix) and "/" not in rel[len(prefix) :]
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning(
                "inference log: %s is unreadable (%s): no file counts as harvested", path, exc
            )
            return {}
    return {}


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


@dataclass
class ReadStats:
    records: int = 0
    malformed: int = 0
    files: list[str] = field(default_factory=list)


def read(
    directory: Path, stats: ReadStats | None = None, newer_than: float | None = None
) -> Iterator[dict[str, Any]]:
    """Every complete record in ``directory`` and its direct subfolders (one per pod when
    several replicas share the volume), oldest file first; malformed lines are skipped and
    counted in ``stats``. ``newer_than`` (a UNIX time) skips whole files last written
    before it: none of their records can be newer."""
    stats = stats if stats is not None else ReadStats()
    pattern = f"{PREFIX}*{SUFFIX}"
    files = [*directory.glob(pattern), *directory.glob(f"*/{pattern}")]
    for path in sorted(files, key=lambda p: (p.stat().st_mtime, p.name)):
        if newer_than is not None and path.stat().st_mtime < newer_than:
            continue
        stats.files.append(str(path.relative_to(directory)))
        with open(path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    stats.malformed += 1  # the tail of a write cut short
                    continue
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    stats.malformed += 1
                    continue
                if not isinstance(record, dict):
                    stats.malformed += 1
                    continue
                stats.records += 1
                yield record
