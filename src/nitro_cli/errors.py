"""Errors a user can cause. The CLI prints their message on one line and exits with code 2."""

import errno
import os
from pathlib import Path

# The longest file name (one path component) most file systems accept, in bytes.
NAME_MAX = 255


class NitroError(Exception):
    """A problem the user can fix (bad config, missing dataset, wrong checkpoint); the message says how."""


def shortened(text: str, keep: int = 60) -> str:
    """`text` cut to its first `keep` characters plus its length, so that a name of hundreds of characters
    does not drown the message about it."""
    return text if len(text) <= keep else f"{text[:keep]}… ({len(text)} characters)"


def name_too_long(path: str | os.PathLike[str]) -> str:
    """What is wrong with a path the system refused as too long (ENAMETOOLONG): the name in it that is
    longer than a file name may be, or else the whole path's length."""
    longest = max(Path(path).parts, key=lambda p: len(os.fsencode(p)), default="")
    size = len(os.fsencode(longest))
    if size > NAME_MAX:
        return (f"file name too long: {shortened(os.fspath(path), 80)} holds a name of {size} bytes "
                f"({shortened(longest, 20)}), more than the {NAME_MAX} a file name may have on most file "
                "systems")
    return (f"file name too long: {shortened(os.fspath(path), 80)} has {len(os.fsencode(path))} bytes, "
            "more than this system allows in a path")


def os_error_text(exc: OSError) -> str:
    """One line for an OSError about a path the user named (a folder, a file, a data root): which path,
    and what is wrong with it."""
    if exc.errno == errno.ENAMETOOLONG and exc.filename is not None:
        return name_too_long(exc.filename)
    where = f" {shortened(os.fspath(exc.filename), 80)}" if exc.filename is not None else ""
    return f"cannot use{where}: {exc.strerror or exc}"
