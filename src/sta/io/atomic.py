"""Write outputs under a temporary name and rename them into place.

A crashed or killed run therefore never leaves a half-written file under a final name.
"""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the directory of ``path``; rename it to ``path`` on success.

    The temporary file keeps the extension of ``path`` (some writers look at it) and starts
    with a dot so that globbing for outputs does not see it.  On an exception the temporary
    file is removed and the exception propagates.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    if ext == "" and "." in stem:
        ext = ""
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".part{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
