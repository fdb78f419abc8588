"""Write outputs under a temporary name and rename them into place.

A crashed or killed run therefore never leaves a half-written file under a final name.
Inside :func:`output_set` the renames wait until the whole set is written, so the files of
one iteration or one job appear together or not at all; :func:`remove_stale` clears the
temporary files a killed run left behind.
Outputs get the permissions of a plain ``open(path, "w")``: ``0o666`` less the user's umask.
"""

import contextlib
import os
import re
import tempfile
import threading

_UMASK_LOCK = threading.Lock()
_FALLBACK_UMASK = []
_ACTIVE = [None]  # the OutputSet collecting this process's writes (all threads), or None

#: temporary names made by atomic_path: ``.<stem>.<8 random characters>.part[<ext>]``
TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part(\.[^./]+)?$")


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
        stage = _ACTIVE[0]
        if stage is not None:
            stage.add(tmp, path)
        else:
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


class OutputSet:
    """Files written through :func:`atomic_path` while the set is open, kept under their
    temporary names until :meth:`commit` renames them all (or :meth:`discard` removes them)."""

    def __init__(self):
        self._pending = {}  # final path -> temporary path, in writing order
        self._lock = threading.Lock()

    def add(self, tmp, path):
        with self._lock:
            old = self._pending.pop(path, None)
            self._pending[path] = tmp
        if old is not None:
            with contextlib.suppress(OSError):
                os.remove(old)

    @property
    def paths(self):
        """Final paths written so far, in writing order."""
        with self._lock:
            return list(self._pending)

    def commit(self, last=()):
        """Rename every file into place, those in ``last`` (final paths) at the end, in that order."""
        last = [os.fspath(p) for p in last]
        with self._lock:
            items = list(self._pending.items())
            self._pending.clear()
        order = [it for it in items if it[0] not in last]
        order += sorted((it for it in items if it[0] in last), key=lambda it: last.index(it[0]))
        for path, tmp in order:
            try:
                os.replace(tmp, path)
            except OSError as exc:
                _name_output(exc, path, tmp)
                raise

    def discard(self):
        """Remove every temporary file of the set."""
        with self._lock:
            items = list(self._pending.values())
            self._pending.clear()
        for tmp in items:
            with contextlib.suppress(OSError):
                os.remove(tmp)


@contextlib.contextmanager
def output_set(commit=True, last=()):
    """Collect this process's :func:`atomic_path` writes (from any thread) into one set.

    With ``commit`` the files are renamed into place when the block ends without an error
    (``last``: final paths renamed at the end, e.g. an optimiser file after the maps it
    names); without it the caller calls ``commit()`` on the yielded :class:`OutputSet`
    (e.g. after the other MPI ranks' files are written too).  On an exception the temporary
    files are removed.  Sets do not nest: an inner block joins the open set.
    """
    if _ACTIVE[0] is not None:
        yield _ACTIVE[0]
        return
    stage = OutputSet()
    _ACTIVE[0] = stage
    try:
        yield stage
    except BaseException:
        _ACTIVE[0] = None
        stage.discard()
        raise
    _ACTIVE[0] = None
    if commit:
        try:
            stage.commit(last)
        except BaseException:
            stage.discard()
            raise


def remove_stale(directory, recursive=False):
    """Remove temporary files that a killed run left in ``directory`` (returns their count).

    Only names :func:`atomic_path` makes are touched (``.<stem>.<random>.part[<ext>]``).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return 0
    removed = 0
    walker = os.walk(directory) if recursive else [(directory, [], os.listdir(directory))]
    for root, _, files in walker:
        for name in files:
            if TEMPORARY_NAME.match(name):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(root, name))
                    removed += 1
    return removed
