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
- **Bounded, and no label lost to retention** (``Retention``, ``plan_prune``). Files
  rotate at ``max_bytes``. A directory (one pod's, on the shared volume) keeps at most
  ``max_files`` files, ``max_total_bytes`` bytes (1 GiB) and ``max_age_s`` of age (30
  days): past any of them the oldest files are deleted, but only those `modelyard
  harvest` has consumed to their current size (its manifest, ``<log dir>/.harvest/
  manifest.json``, in this directory or its parent when each pod writes a subfolder).
  Unharvested files are kept, up to ``hard_max_files`` (default 4 x ``max_files``) and
  twice the byte budget; past that the oldest is deleted anyway, with an error saying
  labels may be lost and to run `modelyard harvest` more often. Each writer's newest file
  (by pid) is never deleted: another worker may still have it open. No manifest (harvest
  never ran) means nothing is harvested. Pruning runs when a file is opened (at start
  and at each rotation).
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


DAY_SECONDS = 86_400


@dataclass(frozen=True)
class Retention:
    """How much one log directory keeps (see the module's docstring)."""

    max_files: int = 50
    hard_max_files: int = 200  # unharvested files are kept beyond max_files, up to this
    max_total_bytes: int = 1 << 30
    max_age_s: float = 30 * DAY_SECONDS

    @property
    def hard_max_total_bytes(self) -> int:
        return 2 * self.max_total_bytes


@dataclass(frozen=True)
class LogFile:
    name: str
    size: int
    mtime: float
    harvested: bool  # harvest consumed it to its current size


def plan_prune(
    files: list[LogFile], *, keep: set[str], retention: Retention, now: float
) -> list[tuple[LogFile, str, bool]]:
    """Which of ``files`` (oldest first, all of the directory's) to delete, each with the
    reason and whether it was unharvested (labels may be lost). ``keep``: never deleted
    (files a writer may have open)."""
    count, total = len(files), sum(f.size for f in files)
    r = retention
    out: list[tuple[LogFile, str, bool]] = []
    for f in files:
        if f.name in keep:
            continue
        if f.harvested:
            if count > r.max_files:
                reason = f"harvested; max_files={r.max_files}"
            elif total > r.max_total_bytes:
                reason = f"harvested; the folder holds {total} bytes, over {r.max_total_bytes}"
            elif now - f.mtime > r.max_age_s:
                reason = f"harvested; older than {r.max_age_s / DAY_SECONDS:g} days"
            else:
                continue
        elif count > r.hard_max_files:
            reason = f"over hard_max_files={r.hard_max_files}"
        elif total > r.hard_max_total_bytes:
            reason = f"the folder holds {total} bytes, over {r.hard_max_total_bytes}"
        else:
            continue
        out.append((f, reason, not f.harvested))
        count, total = count - 1, total - f.size
    return out


class InferenceLog:
    def __init__(
        self,
        directory: Path,
        max_bytes: int = 64 * 1024 * 1024,
        max_files: int = 50,
        fsync_every: float = 1.0,
        hard_max_files: int | None = None,
        max_total_bytes: int = 1 << 30,
        max_age_s: float = 30 * DAY_SECONDS,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_files = max_files
        # Unharvested files are kept beyond max_files, up to this many.
        self.hard_max_files = max(max_files, hard_max_files or 4 * max_files)
        self.retention = Retention(max_files, self.hard_max_files, max_total_bytes, max_age_s)
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
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # removed as dead
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
        """Delete what ``plan_prune`` says: harvested files past the count, byte or age
        budget; unharvested ones only past the hard limits, with an error."""
        consumed = harvested(self.directory)
        files: list[LogFile] = []
        newest: dict[str, tuple[int, str]] = {}  # pid -> (seq, name): may be open
        for path in self.directory.glob(f"{PREFIX}*{SUFFIX}"):
            try:
                st = path.stat()
            except FileNotFoundError:  # another worker pruned it first
                continue
            done = st.st_size <= consumed.get(path.name, -1)
            files.append(LogFile(path.name, st.st_size, st.st_mtime, done))
            pid, seq = _writer(path.name)
            if pid and seq > newest.get(pid, (-1, ""))[0]:
                newest[pid] = (seq, path.name)
        files.sort(key=lambda f: (f.mtime, f.name))  # as read() orders them
        keep = {name for _, name in newest.values()}
        if self._path is not None:
            keep.add(self._path.name)
        plan = plan_prune(files, keep=keep, retention=self.retention, now=time.time())
        for f, reason, lost in plan:
            if lost:
                log.error(
                    "inference log: removing %s before `modelyard harvest` read it (%s): "
                    "feedback labels of its predictions may be lost. Run `modelyard harvest` "
                    "more often (or raise the limits).",
                    f.name,
                    reason,
                )
            else:
                log.info("inference log: removing %s (%s)", f.name, reason)
            (self.directory / f.name).unlink(missing_ok=True)

    def _sync_loop(self, every: float) -> None:
        while not self._closed.wait(every):
            with self._lock:
                self._check_linked()
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

    def _check_linked(self) -> None:
        """The open file was deleted (its folder removed as a dead pod's by harvest, or by
        hand): what follows would go nowhere. Close it; the next append opens a new one
        (and the folder again). Called with the lock held, off the request path."""
        if self._fd < 0:
            return
        try:
            linked = os.fstat(self._fd).st_nlink > 0
        except OSError:
            return
        if not linked:
            log.warning("inference log: %s was deleted; writing to a new file", self._path)
            fd, self._fd = self._fd, -1
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


def _writer(name: str) -> tuple[str, int]:
    """(pid, seq) from ``inference-<time>-<pid>-<seq>.jsonl``; ("", -1) if not ours."""
    parts = name[len(PREFIX) : -len(SUFFIX)].split("-")
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return parts[1], int(parts[2])
    return "", -1


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
