"""How every command writes its output folder: one writer at a time, whole files or none, and
a full disk that loses nothing.

- :class:`DirectoryLock`: the writer's lock, ``FOLDER/.lock`` (``fcntl.flock``). Training,
  deprivation, the analyses, the simulator, cross-validation, the baselines and the checkpoint
  converter take it before they look at what the folder holds and keep it to the end; a
  second writer is refused with one line naming the holder (command, process, start time).
  It is removed when released; the kernel drops the lock when its process ends however it
  ends (kill -9 included), so a lock file left behind never blocks: the next writer says
  whose it was.
- :func:`atomic_path` and the ``atomic_*`` writers: every file is written under a temporary
  name beside its target, flushed and fsynced, then renamed over it, so a reader sees the old
  file or the new one, never half of one. A write that fails for want of space
  (``ENOSPC``/``EDQUOT``) removes its temporary file and raises :class:`DiskFullError`
  naming the file and the space left.
- :func:`together`: a command's result files appear all at once, or none of them; nothing
  else it writes waits for them.
- :func:`claim_results_dir` and :func:`removed_if_unused`: the rules of a command's results
  folder (nothing replaced without ``--overwrite``; a folder a failed command created is
  taken away again).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

LOCK_FILE = ".lock"
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))   # disk full, quota used up


class DiskFullError(OSError):
    """A file could not be written for want of space; nothing half-written was left behind.
    ``str()`` is one line: the file, the space free there, and what to do."""

    def __init__(self, path, needed: int | None = None, message: str = ""):
        self.path = Path(path)
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = None
        self.free = free
        sizes = [f"{_size(needed)} needed"] if needed else []
        sizes += [f"{_size(free)} free on its disk"] if free is not None else []
        super().__init__(message or (
            f"no space left to write {self.path}"
            + (f" ({', '.join(sizes)})" if sizes else "")
            + "; the file there before (if any) is unchanged: free some space and run again"))


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a full disk or quota."""
    while err is not None:
        if isinstance(err, DiskFullError) or (isinstance(err, OSError)
                                              and err.errno in _FULL):
            return True
        err = err.__cause__ or err.__context__
    return False


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# The open groups of together(), innermost last: (the targets it holds back, the
# (temporary, target) renames it holds back so far).
_GROUPS: list[tuple[frozenset, list]] = []


def _key(path) -> str:
    return os.path.abspath(os.fspath(path))


def _group_of(path) -> list | None:
    """The deferred list of the innermost open group that holds ``path`` back, or None."""
    key = _key(path)
    for targets, deferred in reversed(_GROUPS):
        if key in targets:
            return deferred
    return None


@contextlib.contextmanager
def together(*targets):
    """The files ``targets`` (paths), when written inside the block (by :func:`atomic_path`
    and the ``atomic_*`` writers), appear together when it ends, or none of them: their
    renames wait for the block's end, and when it fails (a full disk at the last of them,
    Ctrl-C) their temporary files are removed and every target keeps what it held before. For
    a command's set of results. Every other file written in the block (a dataset the command
    generates on the way, a log) is written as usual, whatever becomes of the block."""
    group = (frozenset(_key(t) for t in targets), [])
    _GROUPS.append(group)
    done = False
    try:
        yield
        done = True
    finally:
        _GROUPS.remove(group)
        deferred = group[1]
        if done:
            renamed = []
            for tmp, path in deferred:
                outer = _group_of(path)
                if outer is not None:       # nested: an outer block holding it decides
                    outer.append((tmp, path))
                else:
                    os.replace(tmp, path)
                    renamed.append(path)
            for folder in {path.parent for path in renamed}:
                _fsync_dir(folder)
        else:
            for tmp, _ in deferred:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it
    over ``path``. A run killed half-way, or a write that fails, leaves the previous file
    intact and no temporary file (killed: see :func:`remove_stale_temps`). A target that is a
    symbolic link is refused: the link stands for the user's file elsewhere. Raises
    :class:`DiskFullError` when the disk or quota is full."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link (to {os.readlink(path)}); it is not "
                         "replaced: remove the link or write elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno in _FULL:
            raise DiskFullError(path) from None
        raise
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600 files; give the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        deferred = _group_of(path)
        if deferred is not None:         # held back by together(): renamed when it ends
            deferred.append((tmp, path))
            return
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path) from None
        raise


def write_bytes_atomic(data: bytes, path) -> None:
    """Write ``data`` to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            view = memoryview(data)
            while view:
                try:
                    view = view[fh.write(view):]
                except OSError as err:
                    if err.errno in _FULL:
                        raise DiskFullError(path, len(data)) from None
                    raise


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` whole or not at all: serialised in memory first, so that a full disk is
    an ``ENOSPC`` of this module's own write (torch's writer reports it as a RuntimeError)."""
    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(buffer.getbuffer(), path)


def atomic_write_text(text: str, path) -> None:
    """Write a text file whole or not at all."""
    write_bytes_atomic(text.encode(), path)


def atomic_write_json(obj, path) -> None:
    """Write JSON whole or not at all (indented, for people to read)."""
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def remove_stale_temps(folder, names) -> list[Path]:
    """Delete the temporary files that :func:`atomic_path` left beside ``folder/name`` when a
    process was killed mid-write (``.NAME.*.tmp``). Call it only while no other process can
    be writing there (under the folder's lock). Returns the removed paths."""
    removed = []
    for name in names:
        for tmp in glob.glob(os.path.join(glob.escape(str(folder)), f".{glob.escape(name)}.*.tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
                removed.append(Path(tmp))
    return removed


def check_writable_dir(path, flag: str = "--out") -> Path:
    """Create ``path`` if needed and check that files can be written there, so that a command
    fails before its long computation rather than after it. Raises ``ValueError`` naming the
    flag."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{flag} {path} is a link to {os.readlink(path)}, which does not exist "
                         "(an unmounted disk?); mount it, or choose another folder")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder; give a folder for the results")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag} {path} cannot be written ({err.strerror or err}); "
                         "choose another folder") from None
    return path


def _command() -> str:
    return " ".join([Path(sys.argv[0]).name] + sys.argv[1:3]) if sys.argv and sys.argv[0] else "python"


# The folders whose lock this process holds: {real path: [open lock file, holders]}. A
# command that writes into a folder it already holds (the deprivation of the shipped network
# writes its results into data/, where it may first generate the dataset) shares its lock.
_HELD: dict[str, list] = {}


class DirectoryLock:
    """The writer's lock of a folder (``folder/.lock``, ``fcntl.flock``), held while a command
    writes there. ``what`` names the work for the message a second writer gets; the file
    holds the holder's process id, start time and command line. Within one process the lock
    is shared: a second ``DirectoryLock`` of a folder this process holds is taken at once, and
    the file goes when the last holder releases it."""

    def __init__(self, folder, what: str = "a run", flag: str = "--out"):
        self.folder, self.what, self.flag, self._fh = Path(folder), what, flag, None
        self.previous = ""   # the holder recorded by a writer that ended without releasing

    def acquire(self) -> "DirectoryLock":
        """Take the lock (again: no-op); ``ValueError`` naming the holder when another
        process holds it."""
        if self._fh is not None:
            return self
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, as before
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        held = _HELD.get(os.path.realpath(self.folder))
        if held is not None:           # this process holds it already: share it
            held[1] += 1
            self._fh = held[0]
            return self
        lock_path = self.folder / LOCK_FILE
        if lock_path.is_symlink():
            raise ValueError(f"{lock_path} is a symbolic link; remove it (it is this folder's "
                             "lock file) and run again")
        while True:
            fh = open(lock_path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                fh.seek(0)
                holder = fh.read().strip()
                fh.close()
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ValueError(f"{self.folder} cannot be locked ({err.strerror}); choose "
                                     f"a folder on a local disk for {self.flag}") from None
                raise ValueError(f"{self.folder} is in use by {self._describe(holder)}; wait "
                                 f"for it to finish, or choose another {self.flag}") from None
            # the holder before us removes the file as it releases it: hold the file that is
            # there now, or another process could lock a new one beside ours
            try:
                if os.stat(lock_path).st_ino == os.fstat(fh.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            fh.close()
        fh.seek(0)
        self.previous = fh.read().strip()
        if self.previous:   # a released lock is removed: its holder died holding it
            print(f"note: {self.folder} was last held by {self._describe(self.previous)}, which "
                  "ended without releasing it (killed?); the lock is cleared, and files it was "
                  "writing were kept whole or not written", file=sys.stderr, flush=True)
        fh.seek(0)
        fh.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        fh.write(f"{os.getpid()} {started} {self.what} | {_command()}\n")
        fh.flush()
        self._fh = fh
        _HELD[os.path.realpath(self.folder)] = [fh, 1]
        return self

    @staticmethod
    def _describe(holder: str) -> str:
        """``"PID DATE TIME WHAT | COMMAND"`` (older files: ``"PID WHAT"``) -> words."""
        parts = holder.split(" ", 3)
        if len(parts) == 4 and parts[1][:4].isdigit() and ":" in parts[2]:
            what, _, command = parts[3].partition(" | ")
            return (f"process {parts[0]} ({what}{', ' + command if command else ''}, started "
                    f"{parts[1]} {parts[2]})")
        pid, _, what = (holder or "unknown").partition(" ")
        return f"process {pid}" + (f" ({what})" if what else "")

    def release(self) -> None:
        """Remove the lock file (the folder is left as it was) and release the lock. A
        process that dies holding it leaves the file, naming it, for the next writer's note."""
        if self._fh is None:
            return
        key = os.path.realpath(self.folder)
        held = _HELD.get(key)
        self._fh, fh = None, self._fh
        if held is not None and held[0] is fh:
            held[1] -= 1
            if held[1] > 0:            # another holder in this process goes on
                return
            del _HELD[key]
        with contextlib.suppress(OSError):
            (self.folder / LOCK_FILE).unlink()
        fh.close()                     # closing releases the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def claim_results_dir(out, names, overwrite: bool = False, what: str = "results",
                      command: str = "",
                      forward: str = "replace them with --overwrite, or choose another --out"
                      ) -> DirectoryLock:
    """Lock the results folder ``out`` of a command that writes the files ``names``, then check
    it: created if needed and writable, and holding none of ``names`` unless ``overwrite``
    (they are then replaced atomically as the new ones are written). Use as a context
    manager; the lock is held to its end. Raises ``ValueError`` (one line, with the ways
    ``forward``); nothing in the folder is touched then."""
    out = check_writable_dir(out)
    lock = DirectoryLock(out, command or what).acquire()
    try:
        remove_stale_temps(out, names)
        existing = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
        if existing and not overwrite:
            raise ValueError(f"{out} already holds {what} ({', '.join(existing)}); {forward}")
    except BaseException:
        lock.release()
        raise
    return lock


@contextlib.contextmanager
def removed_if_unused(folder, ours=(LOCK_FILE,)):
    """Run the block; when it raises, a ``folder`` that did not exist before it (and the parent
    folders created with it) is removed again if it holds nothing but the bookkeeping files
    ``ours``. A folder that existed, or one that now holds anything else (a checkpoint, a
    result), is kept as it is."""
    folder = Path(folder)
    new = [p for p in (folder, *folder.parents) if not p.exists() and not p.is_symlink()]
    try:
        yield
    except BaseException:
        if new and folder.is_dir():
            for name in ours:
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
        for p in new:
            try:
                p.rmdir()          # only an empty folder
            except FileNotFoundError:
                continue
            except OSError:
                break
        raise
