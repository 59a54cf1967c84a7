"""Errors shared across the package (a leaf module: it imports nothing of ours), and how the commands report
them: one line on stderr, exit status 2, no traceback."""
from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2  # the exit status of every command for bad input, a bad checkpoint or an unwritable output


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (missing/unexpected keys, wrong shapes, bad file)."""


class OutputError(ValueError):
    """An output that cannot be written (a read-only folder, a parent that is a file, ...)."""


# What a command reports as the user's problem (bad input, checkpoint, options or output) rather than as a bug:
# ValueError covers CheckpointError, OutputError and data.video_io.VideoError; OSError covers FileExistsError
# (an output that exists without --overwrite), FileNotFoundError and PermissionError.
USER_ERRORS = (ValueError, OSError)


def naming(error: Exception, path) -> Exception:
    """`error` with the file or folder `path` in front of its message, unless the message names it already
    (same type; for messages such as "checkpoint does not match model 'x': ..." that do not say which file)."""
    text = str(error)
    if str(path) in text:
        return error
    try:
        return type(error)(f"{path}: {text}")
    except TypeError:  # an exception type with other arguments
        return error


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (its lines joined with ' '); an OSError as 'FILE: what went wrong'."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error)
        if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
            text = error.args[0]  # str(KeyError) adds quotes
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(error).__name__


def report(error: BaseException, file=None) -> int:
    """Print `error: MESSAGE` as one line to stderr (or `file`) and return the commands' exit status for it."""
    print(f"error: {one_line(error)}", file=file if file is not None else sys.stderr)
    return EXIT_BAD_INPUT
