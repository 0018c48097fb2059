"""Which errors are the user's, and which are ours.

Policy (what ``blendmask`` does with an exception, see :func:`blendmask.cli.main`):

- **Errors raised on purpose for bad input** print one line, ``error: <message>``, and exit
  with status 1. They are the exceptions of :data:`USER_ERRORS`:

  - ``ValueError``: a bad value or a malformed file (a config key, a COCO record, a weights
    file that does not fit; :class:`blendmask.convert.ConversionError` is one);
  - ``OSError``: a path that is missing, exists already, is not a directory or is not
    writable (``FileNotFoundError``, ``FileExistsError``, ``NotADirectoryError``,
    ``PermissionError``...);
  - :class:`BlendMaskError`: raised on purpose but neither of the above, e.g.
    :class:`InputTypeError` (a value of the wrong type in a config override or a file);
    and the engine's ``NonFiniteLossError`` (also a ``RuntimeError``: the training diverged,
    with the checkpoint to resume from);

  Their messages name the argument, the file and the record.
- **Everything else** (``RuntimeError``, ``TypeError``, ``KeyError``, ``ImportError``,
  ``MemoryError``, ``torch.OutOfMemoryError``...) is a bug or a failing machine: the command
  prints the traceback and exits with status 1. ``BLENDMASK_TRACEBACK=1`` prints the traceback
  for user errors too.
- Command-line syntax errors exit with status 2; an interrupt (Ctrl-C) with 130, SIGTERM with 143
  (both print one line; an interrupted training run names its last checkpoint).

So a module that refuses bad input raises a ``ValueError`` or an ``OSError``, or, when its
Python type must be another (a wrong type is a ``TypeError``), a subclass of both
:class:`BlendMaskError` and that type, so that ``except TypeError`` keeps working.
"""
from __future__ import annotations

__all__ = ["BlendMaskError", "InputTypeError", "USER_ERRORS", "is_user_error"]


class BlendMaskError(Exception):
    """Base of the errors raised on purpose that are neither a ``ValueError`` nor an ``OSError``."""


class InputTypeError(BlendMaskError, TypeError):
    """A value given by the user (a config override, a field of a file) has the wrong type."""


#: The exception types reported as a one-line ``error: ...`` by the command line.
USER_ERRORS = (BlendMaskError, ValueError, OSError)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` was raised on purpose for bad input (see the module docstring)."""
    return isinstance(exc, USER_ERRORS)
