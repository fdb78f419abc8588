"""Write outputs under a temporary name and rename them into place.

A crashed or killed run therefore never leaves a half-written file under a final name.
Outputs get the permissions of a plain ``open(path, "w")``: ``0o666`` less the user's umask.
"""

import contextlib
import os
import tempfile
import threading

_UMASK_LOCK = threading.Lock()
_FALLBACK_UMASK = []


def current_umask():
    """The process umask, read without changing it where ``/proc`` allows (Linux >= 4.7).

    Elsewhere it is read once per process, under a lock, by setting and restoring it
    (``os.umask`` has no read-only form).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        if not _FALLBACK_UMASK:
            old = os.umask(0o022)
            os.umask(old)
            _FALLBACK_UMASK.append(old)
    return _FALLBACK_UMASK[0]


def _name_output(exc, path, tmp=None):
    """Make an OSError raised while writing ``path`` name ``path`` rather than the temporary
    file (or nothing, as ``write()`` on a full disk does); ``exc.sta_output`` = ``path``."""
    if exc.filename is None or exc.filename == tmp:
        exc.filename = path
    if exc.filename2 == tmp:
        exc.filename2 = None
    exc.sta_output = path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the directory of ``path``; rename it to ``path`` on success.

    The temporary file keeps the extension of ``path`` (some writers look at it) and starts
    with a dot so that globbing for outputs does not see it.  It is created with mode
    ``0o666 & ~umask``, as ``open(path, "w")`` would create ``path``.  On an exception the
    temporary file is removed and the exception propagates; an ``OSError`` then names
    ``path`` (``exc.filename``, unless it named another file) and has ``exc.sta_output``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    if ext == "" and "." in stem:
        ext = ""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".part{ext}", dir=directory)
    except OSError as exc:
        _name_output(exc, path)
        raise
    os.close(fd)
    try:
        with contextlib.suppress(OSError):  # a file system without modes keeps mkstemp's 0600
            os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            _name_output(exc, path, tmp)
        raise


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
