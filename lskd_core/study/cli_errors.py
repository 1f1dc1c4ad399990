"""The one line a command prints for an OS error a user can cause (a full disk, a read-only or
mistyped path): shared by the study's and the advisor's command lines."""

from __future__ import annotations

import errno

__all__ = ["os_error_line"]

_OS_REMEDIES = {
    errno.ENOSPC: "the disk is full: free space or choose another --out",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another --out",
    errno.EROFS: "the file system is read-only: choose a writable --out",
    errno.EACCES: "permission denied: fix the permissions or choose another path",
    errno.EPERM: "operation not permitted: fix the permissions or choose another path",
    errno.EEXIST: "it exists but is not a directory (a file, or a symlink to nowhere): remove it or choose "
                  "another --out",
    errno.ENOTDIR: "a part of the path is a file, not a directory: choose another path",
    errno.ENOENT: "no such file or directory: check the path",
    errno.ELOOP: "too many levels of symbolic links: fix the link",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
}


def os_error_line(exc: OSError) -> str:
    """One line naming the file an OSError is about and what to do (errors a user can cause)."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None) or "(no file named)"
    remedy = _OS_REMEDIES.get(exc.errno or -1, exc.strerror or str(exc))
    return f"{where}: {remedy}"
