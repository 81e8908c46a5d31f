"""Bad input the user can fix, and how it is worded: one line that names the problem and the fix.

Torch- and numpy-free, and seldom edited: most modules need only `UserError`, so they import it
from here, not from `io` (an edit to `io` reruns every stage that reads or writes a file).
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Bad input the user can fix: printed as one line, exit code 2, no traceback."""


MESSAGE_CHARS = 600  # a message is one terminal paragraph, however long a pasted path or value


def one_line(text: str) -> str:
    """Control characters (a newline in a file name, say) escaped; at most MESSAGE_CHARS."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                  for c in text)
    return out if len(out) <= MESSAGE_CHARS else out[:MESSAGE_CHARS - 3] + "..."


def error_line(err: BaseException) -> str:
    """An exception as one line: its type and last non-empty line (torchvision's MNIST stacks one
    line per mirror it tried; Pillow's plugins write several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def show_path(path: str | os.PathLike) -> str:
    """A path for a message: one line, whatever characters its name holds."""
    return one_line(str(path))


# what to do about an OSError met on a path, by errno (the rest: check the path)
PATH_FIXES = {
    errno.ELOOP: "a symbolic link in it points back to itself: fix or remove that link",
    errno.ENAMETOOLONG: "a folder or file name in it is longer than the file system allows "
                        "(255 bytes): use shorter names",
    errno.ENOTDIR: "a part of it that should be a folder is a file: fix the path",
    errno.EACCES: "give yourself access to it (permissions), or use another path",
    errno.EPERM: "give yourself access to it (permissions), or use another path",
    errno.EROFS: "it is on a read-only file system: use a path on a writable one",
    errno.ENOSPC: "its disk is full: free space, then run again",
    errno.EDQUOT: "your disk quota is used up: free space, then run again",
    errno.EFBIG: "the file is larger than its file system allows: use another disk",
    errno.ENOENT: "it, or a folder in it, does not exist (removed while this ran?): fix the "
                  "path, or run the stage that writes it (`dvc repro`)",
    errno.EEXIST: "a part of it that should be a folder is a file: fix the path",
    errno.EINVAL: "fix the path",
}


def path_error(path: str | os.PathLike, err: OSError, doing: str = "read") -> UserError:
    """One line for an OSError met while handling `path` (`doing`: read, written): the path, the
    system's reason and what to do."""
    fix, why = PATH_FIXES.get(err.errno, "check the path"), err.strerror or type(err).__name__
    if doing == "written":  # the words every other write error uses
        if err.errno == errno.ENOENT:  # the writer is the stage: no stage to run first
            fix = "a folder in it does not exist, or was removed while this ran: fix the path"
        return UserError(f"cannot write {show_path(path)} ({why}): {fix}")
    return UserError(f"{show_path(path)} cannot be {doing} ({why}): {fix}")


def check_path_text(path: str | os.PathLike, doing: str) -> None:
    if "\0" in os.fspath(path):  # a YAML "\0" in a path param: os calls raise ValueError
        raise path_error(path, OSError(errno.EINVAL, "a NUL character in the path"), doing)
