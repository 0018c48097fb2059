"""Reading and writing weights files: the one place where ``torch.load`` and ``torch.save`` run.

Reading (:func:`load_torch_file`, :func:`read_state_dict`, :func:`load_checkpoint`) always
uses ``torch.load(weights_only=True)``, so a file cannot run code, and turns every way a file
can be wrong into a one-line error that names the file and what was wrong:

- missing: :class:`FileNotFoundError`;
- not a regular file, not written by ``torch.save`` (random bytes, truncated, or a stored
  tensor whose bytes changed: the zip checksums are verified), a pickle of objects that
  ``weights_only`` refuses, or the wrong structure: :class:`WeightsFileError` (a ``ValueError``).

Numpy arrays and scalars are accepted besides tensors (detectron2 accepts them inside
``"model"``, and older AdelaiDet files hold them): ``weights_only`` stays on, with an explicit
allow-list of the numpy globals that rebuild numeric arrays (:func:`numpy_safe_globals`), and
the state-dict readers turn them into tensors.

Writing (:func:`atomic_save`, :func:`atomic_write`) goes through a temporary file in the
target's directory, fsynced and renamed over the target, so the target holds either its old or
its new content and a failure leaves no temporary file behind. The written file gets the
permissions of a file created by ``open()``: ``0o666`` less the process umask.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional, Sequence, Union

import torch

__all__ = [
    "WeightsFileError",
    "atomic_save",
    "atomic_write",
    "atomic_write_temp_files",
    "load_torch_file",
    "numpy_safe_globals",
    "load_checkpoint",
    "read_state_dict",
]

PathLike = Union[str, os.PathLike]


class WeightsFileError(ValueError):
    """A file that is not a readable weights file; the message names the file and the reason."""


# ----------------------------------------------------------------------------- reading


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _refused_global(error: BaseException) -> str:
    """The ``GLOBAL module.name`` a weights-only unpickler refused, or ``""`` for other errors."""
    for candidate in (error, error.__cause__, error.__context__):
        line = _first_line(str(candidate)) if candidate is not None else ""
        if line.startswith("Unsupported global:"):
            return line[len("Unsupported global:"):].split(" was not an allowed global")[0].strip()
    return ""


#: The modules whose globals a weights file may name (what ``weights_only`` can rebuild).
_DATA_MODULES = ("torch", "collections", "numpy", "_codecs", "builtins.set", "builtins.frozenset")


def _code_global_in_pickle(path: Path, limit: int = 1 << 20) -> str:
    """The first global a plain pickle stream at ``path`` would import that is not data (e.g.
    ``posix.system``), found by reading its opcodes without running them, or ``""``. Only the
    first ``limit`` bytes are read."""
    import pickletools

    with open(path, "rb") as handle:
        head = handle.read(limit)
    if not head.startswith(b"\x80"):
        return ""
    strings: list = []
    try:
        for opcode, argument, _ in pickletools.genops(head):
            if isinstance(argument, str) and opcode.name.endswith("UNICODE"):
                strings.append(argument)
            name = ""
            if opcode.name == "GLOBAL":
                name = argument.replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            if name and not name.startswith(_DATA_MODULES):
                return name
    except Exception:  # noqa: BLE001 - a stream cut short by the limit, or not a pickle after all
        pass
    return ""


#: The largest ratio of a zip record's declared size to its stored size that a weights file may
#: have: ``torch.save`` stores records uncompressed, so only a crafted file (a "zip bomb" that
#: inflates to many times its size while being read) goes beyond it.
MAX_INFLATION_RATIO = 20
_SMALL_RECORD = 1 << 20  # records up to this declared size are never a memory threat


def _check_zip_sizes(path: Path, what: str) -> None:
    """Refuse, from the zip directory alone (nothing inflated), a record that would inflate beyond
    :data:`MAX_INFLATION_RATIO` times its stored size."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise WeightsFileError(f"cannot read {what} {path}: truncated or corrupt zip archive ({error})") from error
    for record in records:
        if record.file_size > max(_SMALL_RECORD, MAX_INFLATION_RATIO * record.compress_size):
            raise WeightsFileError(
                f"cannot read {what} {path}: its record {record.filename!r} would inflate from "
                f"{record.compress_size} to {record.file_size} bytes, more than {MAX_INFLATION_RATIO} times "
                "(torch.save stores records uncompressed; this file was crafted or damaged); nothing was read")


def _check_zip_checksums(path: Path, what: str) -> None:
    """``torch.load`` does not verify the CRC-32 of a zip-format file's records; check them here so
    that a damaged tensor is an error rather than different weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise WeightsFileError(f"cannot read {what} {path}: truncated or corrupt zip archive ({error})") from error
    if damaged is not None:
        raise WeightsFileError(f"cannot read {what} {path}: its record {damaged!r} fails its checksum "
                               f"(the file is corrupt)")


#: The numeric numpy dtype classes (``numpy.dtypes``) whose arrays and scalars a weights file may hold.
_NUMPY_DTYPE_CLASSES = (
    "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "LongLongDType",
    "UInt8DType", "UInt16DType", "UInt32DType", "UInt64DType", "ULongLongDType",
    "Float16DType", "Float32DType", "Float64DType",
)


def numpy_safe_globals() -> list:
    """The ``torch.serialization.safe_globals`` allow-list that lets ``weights_only`` unpickle
    numeric numpy arrays and scalars: ``numpy.ndarray``, ``numpy.dtype``, the numeric dtype
    classes, and ``_reconstruct``/``scalar`` under both their numpy 2 (``numpy._core``) and
    numpy 1 (``numpy.core``, as older files name them) module paths. Nothing that can run code."""
    import numpy
    from numpy._core import multiarray

    allowed: list = [numpy.ndarray, numpy.dtype]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        allowed += [function, (function, f"numpy.core.multiarray.{name}")]
    dtypes = getattr(numpy, "dtypes", None)
    allowed += [getattr(dtypes, name) for name in _NUMPY_DTYPE_CLASSES if hasattr(dtypes, name)]
    return allowed


def load_torch_file(path: PathLike, *, what: str = "weights file") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors; numeric
    numpy arrays and scalars are allowed (:func:`numpy_safe_globals`) and come back as numpy.

    Args:
        path: the file.
        what: how messages name the file, e.g. ``"checkpoint"`` or ``"--backbone-weights file"``.
    Raises:
        FileNotFoundError: ``"<what> not found: <path>"``.
        WeightsFileError: the path is not a regular file, was not written by ``torch.save``
            (random bytes, truncated, corrupt), or holds objects ``weights_only`` refuses.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise WeightsFileError(f"cannot read {what} {path}: not a regular file")
    if zipfile.is_zipfile(path):
        _check_zip_sizes(path, what)
        _check_zip_checksums(path, what)
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as error:
        refused = _refused_global(error)
        if refused:
            raise WeightsFileError(
                f"cannot read {what} {path}: it holds objects other than tensors and plain containers "
                f"({refused}), which torch.load(weights_only=True) refuses to unpickle"
            ) from error
        code = _code_global_in_pickle(path)
        if code:
            raise WeightsFileError(
                f"cannot read {what} {path}: it is a Python pickle that would import and call {code} when loaded "
                f"(code, not weights); refused without running it") from error
        reason = _first_line(str(error.__context__ or error))
        raise WeightsFileError(f"cannot read {what} {path}: not a file written by torch.save "
                               f"(random bytes, or truncated or corrupt: {reason})") from error
    except Exception as error:  # torch raises RuntimeError, EOFError, KeyError, ... for damaged files
        reason = _first_line(str(error)).split(". This is an internal miniz error")[0] or type(error).__name__
        raise WeightsFileError(f"cannot read {what} {path}: not a file written by torch.save "
                               f"(random bytes, or truncated or corrupt: {reason})") from error


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(map(str, value))[:5]}"
    return f"a {type(value).__name__}"


def _as_tensor(value: Any, path: Path, where: str, key: str) -> Any:
    """A numpy array or scalar as a tensor (copied, same dtype, 0-d for scalars); anything else unchanged."""
    import numpy

    if not isinstance(value, (numpy.ndarray, numpy.generic)):
        return value
    try:
        return torch.from_numpy(numpy.array(value))
    except TypeError as error:
        raise WeightsFileError(f"{path}: {where} entry {key!r} is a numpy {value.dtype} array, which has no "
                               f"tensor dtype") from error


def _check_state_dict(state: Any, path: Path, where: str) -> Dict[str, torch.Tensor]:
    """``state`` as a dict of str -> Tensor, numpy arrays and scalars converted to tensors."""
    if not isinstance(state, Mapping):
        raise WeightsFileError(f"{path}: {where} must hold a state dict (str -> Tensor), got {_describe(state)}")
    tensors = {}
    for key, value in state.items():
        value = _as_tensor(value, path, where, key)
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsFileError(f"{path}: {where} must hold a state dict (str -> Tensor), but entry {key!r} "
                                   f"is a {type(value).__name__}")
        tensors[key] = value
    return tensors


def read_state_dict(path: PathLike, *, what: str = "weights file", wrappers: Sequence[str] = ("model",)
                    ) -> Dict[str, torch.Tensor]:
    """A state dict (str -> Tensor) from a file that holds one, optionally wrapped; numpy arrays
    and scalars in it come back as tensors.

    Args:
        path, what: see :func:`load_torch_file`.
        wrappers: keys unwrapped in order when the file is a dict holding a dict under them,
            e.g. ``("model", "state_dict")`` accepts ``{"model": {"state_dict": sd}}``.
    Raises:
        FileNotFoundError, WeightsFileError: see :func:`load_torch_file`; also when the
            (unwrapped) content is not a non-empty mapping of str to Tensor.
    """
    data = load_torch_file(path, what=what)
    for wrapper in wrappers:
        if isinstance(data, Mapping) and isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
    state = _check_state_dict(data, Path(path), f"the {what}")
    if not state:
        raise WeightsFileError(f"{path}: the {what} holds an empty state dict")
    return state


def load_checkpoint(path: PathLike, *, what: str = "checkpoint") -> Dict[str, Any]:
    """A blendmask weights file or training checkpoint: a dict whose ``"model"`` is a state dict.

    Weights files are ``{"model": state_dict, "config": BlendMaskConfig.to_dict(), ...}``;
    training checkpoints add ``optimizer``, ``scheduler``, ``iteration`` and ``rng``. Numpy
    arrays and scalars in ``"model"`` come back as tensors.

    Raises:
        FileNotFoundError, WeightsFileError: see :func:`load_torch_file`; also
            ``"<path> is not a blendmask weights file: ..."`` when the structure is wrong.
    """
    data = load_torch_file(path, what=what)
    if not isinstance(data, Mapping) or "model" not in data:
        raise WeightsFileError(f"{path} is not a blendmask weights file: expected a dict with a 'model' "
                               f"state dict, got {_describe(data)}")
    return {**data, "model": _check_state_dict(data["model"], Path(path), "its 'model' entry")}


# ----------------------------------------------------------------------------- writing


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask: read from ``/proc`` where Linux has it, else by setting it and putting
    it back at once (which briefly changes it for other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_TEMP_SUFFIX = ".tmp"


def atomic_write_temp_files(target_names: str) -> "re.Pattern[str]":
    """The names of the temp files :func:`atomic_write` makes (and a killed process leaves) for the
    targets whose names match the regex ``target_names``: ``.NAME.XXXXXXXX.tmp`` (``mkstemp``'s
    random part is letters, digits and ``_``). Use it with ``fullmatch``."""
    return re.compile(r"\.(?:" + target_names + r")\.[A-Za-z0-9_]+" + re.escape(_TEMP_SUFFIX))


#: What a failed write adds to the system's explanation, by errno.
_WRITE_FAILURE_HINTS = {
    errno.EFBIG: " (the largest file size allowed: ulimit -f, or the file system's)",
}


class _RecordingWriter:
    """A binary file object that remembers the first ``OSError`` its ``write`` raised: writers
    such as ``torch.save`` replace it with an error of their own that does not say why."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _write_failure(path: Path, error: OSError) -> OSError:
    """``error`` as a one-line ``OSError`` of the same errno naming ``path`` and what happened."""
    reason = (os.strerror(error.errno) if error.errno else str(error)) + _WRITE_FAILURE_HINTS.get(error.errno, "")
    failure = OSError(f"cannot write {path}: {reason}; it keeps its previous content, if any")
    failure.errno = error.errno
    return failure


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file_object)`` on a temp file in ``path``'s directory, fsync it, give it the
    mode ``0o666 & ~umask``, then rename it over ``path``.

    If anything fails (or the process dies) midway, ``path`` keeps its old content; on an
    exception the temp file is removed. Parent directories are created. A write the system
    refuses (no space, quota, file size limit) raises an ``OSError`` with that errno whose
    message names ``path`` and the reason, whatever error ``write`` turned it into.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        recording = _RecordingWriter(os.fdopen(fd, "wb"))
        try:
            with recording._handle as handle:  # closing flushes, which can fail too
                write(recording)
                handle.flush()
                os.fsync(handle.fileno())
        except Exception as error:
            cause = recording.error or (error if isinstance(error, OSError) and error.errno else None)
            if cause is None:
                raise
            raise _write_failure(path, cause) from error
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp creates 0o600 whatever the umask
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda handle: torch.save(obj, handle))
