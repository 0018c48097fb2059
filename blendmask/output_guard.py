"""The one guard every command takes on what it writes: an exclusive lock and a manifest.

A command that writes into an output directory holds :func:`guard_output_dir` for its whole run:

- **Lock**: ``DIR/.blendmask.lock`` holds an exclusive ``flock`` and names its owner (host,
  pid, command, start time). A second command on the same directory is refused at once, in one
  line naming the owner (:class:`OutputInUseError`). The kernel drops the ``flock`` when its
  process dies, so the lock file a killed run leaves is stale: the next run takes it over (and
  says so).
- **Manifest**: ``DIR/.blendmask-manifest.json`` lists the files our runs created there. A
  directory is written into only if every file in it is ours: listed in the manifest of its
  directory or of a directory above it, or, after a killed run (stale lock), written since that
  run started. Otherwise the command is refused before it writes anything, naming the first
  foreign file (``FileExistsError``). On exit the manifest is updated with what the run left.
- **Symbolic links**: ``DIR`` may be a link; the directory it resolves to is the one locked,
  checked and recorded.

:func:`guard_output_file` does the same for a command that writes one file (``convert``,
``export-onnx``): a lock next to it, and an existing file only replaced with ``overwrite``.

Both first check the location (:func:`blendmask.outputs.check_output_location`: the right kind,
writable), so that a guard is all a run needs to take before its work.

Locks are ``fcntl.flock`` locks: POSIX systems only; on network file systems they hold only where
the file system supports ``flock``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Union

from .errors import BlendMaskError
from .outputs import check_output_location

__all__ = ["OutputInUseError", "OutputGuard", "guard_output_dir", "guard_output_file", "is_bookkeeping",
           "LOCK_FILE", "MANIFEST_FILE"]

PathLike = Union[str, os.PathLike]
LOCK_FILE = ".blendmask.lock"
MANIFEST_FILE = ".blendmask-manifest.json"
_OWN_NAMES = (LOCK_FILE, MANIFEST_FILE)
logger = logging.getLogger(__name__)


class OutputInUseError(BlendMaskError):
    """Another live blendmask process holds the lock of the output; the message names it."""


def is_bookkeeping(name: str) -> bool:
    """The guard's own files: locks, manifests and the temp files of a manifest being written."""
    return (name in _OWN_NAMES or name.startswith(f".{MANIFEST_FILE}.")
            or (name.startswith(".") and name.endswith(LOCK_FILE)))


def _describe_owner(owner: Dict) -> str:
    started = owner.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else ""
    return f"'{owner.get('command', 'blendmask')}' (pid {owner.get('pid', '?')} on host {owner.get('host', '?')}{since})"


class _Lock:
    """An exclusive, non-blocking ``flock`` on ``path`` whose content names the owner (JSON)."""

    def __init__(self, path: Path, *, option: str, target: Path, command: str):
        self.path, self.option, self.target, self.command = path, option, target, command
        self.fd: Optional[int] = None
        self.stale_owner: Optional[Dict] = None  # what a dead run left in the lock file we took over

    def acquire(self) -> None:
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise OutputInUseError(
                    f"{self.option} {self.target} is in use by {_describe_owner(owner)}: wait for it to end, "
                    f"or choose another {self.option}") from None
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:  # the previous owner removed it between our open and our flock
                same_file = False
            if same_file:
                break
            os.close(fd)
        previous = _read_owner(fd)
        self.stale_owner = previous or None
        if previous:
            logger.warning("%s %s: took over the lock left by %s, which is no longer running", self.option,
                           self.target, _describe_owner(previous))
        record = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # before closing: nobody can take the lock of a file being removed
        os.close(self.fd)
        self.fd = None


def _read_owner(fd: int) -> Dict:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _read_manifest(directory: Path) -> Set[str]:
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    files = data.get("files") if isinstance(data, dict) else None
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def _walk_files(root: Path) -> List[str]:
    """Every file (and symbolic link) under ``root``, as sorted POSIX paths relative to it, without
    the guard's bookkeeping files and without following links."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        rel = Path(folder).relative_to(root)
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        for name in files + links:
            if not is_bookkeeping(name):
                found.append((rel / name).as_posix())
    return sorted(found)


class OutputGuard:
    """The lock and manifest of one output directory (module doc); use it through :func:`guard_output_dir`.

    ``own_files`` are the files found at entry that our runs made (what :meth:`remove_own_outputs`
    deletes); ``directory`` is the resolved directory written into."""

    def __init__(self, path: PathLike, *, option: str, command: str, owned_marker: Optional[str] = None):
        self.path = Path(path)
        self.option = option
        self.command = command
        self.owned_marker = owned_marker
        self.directory = Path(os.path.realpath(self.path))
        self.own_files: List[str] = []
        self._created: List[Path] = []  # the directories the guard made (deepest first)
        self._lock = _Lock(self.directory / LOCK_FILE, option=option, target=self.path, command=command)

    def __enter__(self) -> "OutputGuard":
        check_output_location(self.path, self.option, is_dir=True)
        folder = self.directory
        while not folder.exists():
            self._created.append(folder)
            folder = folder.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            self.own_files = self._check_ownership()
        except BaseException:
            self._lock.release()
            self._remove_created_if_empty()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._write_manifest()
        finally:
            self._lock.release()
        self._remove_created_if_empty()

    def _remove_created_if_empty(self) -> None:
        """A run that wrote nothing leaves none of the directories the guard made."""
        for folder in self._created:
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _owned_by_manifests(self, rel: str, cache: Dict[Path, Set[str]]) -> bool:
        path = self.directory / rel
        for folder in path.parents:
            if folder not in cache:
                cache[folder] = _read_manifest(folder)
            if path.relative_to(folder).as_posix() in cache[folder]:
                return True
        return False

    def _check_ownership(self) -> List[str]:
        files = _walk_files(self.directory)
        if self.owned_marker and (self.directory / self.owned_marker).is_file():
            return files
        stale = self._lock.stale_owner
        started = stale.get("started") if stale else None
        cache: Dict[Path, Set[str]] = {}
        foreign = []
        for rel in files:
            if self._owned_by_manifests(rel, cache):
                continue
            if isinstance(started, (int, float)) and os.lstat(self.directory / rel).st_mtime >= started:
                continue  # written by the run that died holding the lock
            foreign.append(rel)
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise FileExistsError(
                f"{self.option} {self.path} holds {foreign[0]!r}{more}, which was not made by '{self.command}' "
                f"or another blendmask run: "
                f"choose a new or empty directory for {self.option}; nothing was written")
        return files

    def _write_manifest(self) -> None:
        if not self.directory.is_dir():
            return
        from .serialization import atomic_write

        files = _walk_files(self.directory)  # all ours: checked at entry, then written under the lock
        if not files:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / MANIFEST_FILE).unlink()
            return
        payload = json.dumps({"files": files}, indent=0).encode()
        atomic_write(self.directory / MANIFEST_FILE, lambda handle: handle.write(payload))

    def remove_own_outputs(self) -> List[Path]:
        """Delete the files of our earlier runs found at entry (never another file), and the
        directories left empty; returns the deleted files."""
        removed = []
        for rel in self.own_files:
            path = self.directory / rel
            if path.is_symlink() or path.is_file():
                path.unlink()
                removed.append(path)
        for folder, _, _ in sorted(os.walk(self.directory), key=lambda entry: -len(entry[0])):
            if Path(folder) != self.directory and not os.listdir(folder):
                os.rmdir(folder)
        self.own_files = []
        return removed


def guard_output_dir(path: PathLike, *, option: str = "--output", command: str = "blendmask",
                     owned_marker: Optional[str] = None) -> OutputGuard:
    """The guard of output directory ``path`` (module doc), a context manager to hold for the run.

    Args:
        path: the output directory (created if missing; may be a symbolic link).
        option: how messages name it, e.g. ``"--output"``.
        command: how the lock names its owner, e.g. ``"blendmask train"``.
        owned_marker: a file name whose presence in the directory marks all of it as ours (the
            marker of directories made before manifests existed).
    Raises (on entry):
        OutputInUseError: a live process holds the lock.
        FileExistsError: the directory holds a file no blendmask run created.
    """
    return OutputGuard(path, option=option, command=command, owned_marker=owned_marker)


@contextlib.contextmanager
def guard_output_file(path: PathLike, *, option: str, command: str = "blendmask", overwrite: bool = False
                      ) -> Iterator[Path]:
    """Hold the lock of output file ``path`` (``.NAME.blendmask.lock`` beside it) for a run.

    Raises ``OutputInUseError`` if another live process writes it, ``FileExistsError`` if it
    exists and ``overwrite`` is false. Yields ``path``."""
    path = check_output_location(path, option, is_dir=False)
    real = Path(os.path.realpath(path))
    real.parent.mkdir(parents=True, exist_ok=True)
    lock = _Lock(real.parent / f".{real.name}{LOCK_FILE}", option=option, target=path, command=command)
    lock.acquire()
    try:
        if os.path.lexists(path) and not overwrite:
            raise FileExistsError(f"{option} {path} exists; choose another path, or pass --overwrite to replace it")
        yield path
    finally:
        lock.release()
