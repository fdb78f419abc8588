"""Shared plumbing of every ``sta_*`` entry point.

Each command module defines ``add_args(parser)`` and ``main(argv=None) -> int``;
``main`` calls :func:`run` with a body function.  :func:`run` owns everything that is the
same for all tools: logging set-up, ``--verbose``, ``--version``, RELION's
``--pipeline_control`` exit files, ``note.txt``, the parameter log at the start, the
timing summary at the end, and turning errors into one clear line and a non-zero exit.
"""

import argparse  # noqa: F401 (re-exported for command modules)
import errno
import logging
import math
import os
import re
import shlex
import sys
import time
import traceback

from sta import __version__
from sta.errors import AbortRequested, StaError  # noqa: F401 (StaError re-exported)

log = logging.getLogger("sta")

EXIT_SUCCESS_FILE = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE_FILE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED_FILE = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW_FILE = "RELION_JOB_ABORT_NOW"


#: option values that are numbers, not options: argparse's own pattern (``-1``, ``-.5``,
#: ``-1.5``) plus exponent forms (``-1e9``, ``-1.5E-3``, ``-.5e2``), so ``--minval -1e9`` parses
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

#: errno values that can only come from writing
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with RELION-style one-line errors: ``ERROR: <prog>: <what> (see --help)``."""

    def error(self, message):
        self.exit(2, f"ERROR: {self.prog}: {message} (see {self.prog} --help)\n")


def make_parser(prog, doc):
    """Argument parser with the options every sta tool shares.

    ``doc`` (the command module's docstring) is the ``--help`` description.
    """
    parser = _Parser(prog=prog, description=doc, formatter_class=_HelpFormatter, allow_abbrev=False)
    parser.register("type", float, finite_float)  # every type=float option refuses nan and inf
    # argparse (3.10-3.13) reads this private attribute when it classifies a token starting
    # with "-"; without it "--minval -1e9" fails with "expected one argument"
    parser._negative_number_matcher = NEGATIVE_NUMBER
    common = parser.add_argument_group("Common")
    common.add_argument("--verbose", action="store_true", help="show tracebacks and debug messages")
    common.add_argument("--version", action="version",
                        version=f"RELION version: 5.0-compatible (sta {__version__})")
    common.add_argument("--pipeline_control", metavar="DIR", default=None,
                        help="RELION job directory: write RELION_JOB_EXIT_* files there")
    return parser


# ----------------------------------------------------------------- argparse type helpers

def existing_file(value):
    """argparse type: a path that must exist."""
    if not os.path.exists(value):
        raise argparse.ArgumentTypeError(f"file not found: {value}")
    return value


def finite_float(value):
    """argparse type of every ``type=float`` option: a finite number (not nan, not inf)."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return v


def even_box(value):
    """argparse type: an even integer > 0 (a box size; odd boxes are not supported)."""
    v = positive_int(value)
    if v % 2:
        raise argparse.ArgumentTypeError(f"expected an even box size, got {value!r} (odd boxes are not supported)")
    return v


def positive_int(value):
    """argparse type: integer > 0."""
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {value!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {value!r}")
    return v


def positive_float(value):
    """argparse type: number > 0."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return v


def nonneg_float(value):
    """argparse type: number >= 0."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value!r}")
    return v


# ----------------------------------------------------------------- job-directory files

def pipeline_file(control_dir, name):
    """RELION concatenates the directory and the file name; accept a missing trailing slash."""
    return os.path.join(control_dir, name)


def program_name(prog):
    """The name the program was started under: a RELION alias (``STA_ARGV0``), the console
    script, or ``prog`` when run as ``python -m``."""
    alias = os.environ.get("STA_ARGV0")
    if alias:
        return alias
    base = os.path.basename(sys.argv[0] or "")
    return base if base.startswith(("sta_", "relion_")) else prog


def write_note(directory, argv, prog="sta"):
    """``note.txt`` as RELION's tomo programs write it (not under pipeline control).

    Written when the run succeeded (RELION writes it at the start), so that a failed run
    leaves the previous run's ``note.txt`` as it was.
    """
    from sta.io.atomic import write_text_atomic

    cmd = " ".join(shlex.quote(a) for a in [program_name(prog)] + list(argv))
    write_text_atomic(os.path.join(directory, "note.txt"), f"Command:\n\n{cmd} \n")


def pipeline_control_in(argv):
    """The ``--pipeline_control`` directory named in ``argv`` (last one wins), or None.

    Used when ``argv`` does not parse, to still write ``RELION_JOB_EXIT_FAILURE``.
    """
    found = None
    argv = list(argv)
    for k, tok in enumerate(argv):
        if tok == "--":
            break
        if tok == "--pipeline_control" and k + 1 < len(argv):
            found = argv[k + 1]
        elif tok.startswith("--pipeline_control="):
            found = tok.split("=", 1)[1]
    return found or None


def os_error_message(exc, prog):
    """One line for an ``OSError``: the file (``exc.filename``) and the reason."""
    def text(name):  # a path, bytes or (rarely) a file descriptor
        return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)

    reason = exc.strerror or str(exc) or type(exc).__name__
    name, target = exc.filename, getattr(exc, "sta_output", None)
    if target is not None:  # raised while sta.io.atomic wrote target
        if name is not None and text(name) != target:
            return f"cannot write {target}: {text(name)}: {reason}"
        return f"cannot write {target}: {reason}"
    if name is None:
        return f"{prog} failed: {reason} (run with --verbose for the traceback)"
    name = text(name)
    if exc.errno == errno.ENOTDIR:  # name the part of the path that is a file where a folder must be
        blocker = _file_in_path(name)
        if blocker is not None:
            return f"cannot use {name}: {blocker} is a file, not a folder"
    if exc.errno in _WRITE_ERRNOS:
        return f"cannot write {name}: {reason}"
    if isinstance(exc, FileExistsError):
        return f"cannot create {name}: {reason}"
    if exc.filename2 is not None:
        return f"{name} -> {text(exc.filename2)}: {reason}"
    return f"{name}: {reason}"


def _file_in_path(path):
    """The first leading part of ``path`` that exists and is not a folder, or None."""
    parts = os.path.normpath(path).split(os.sep)
    for i in range(1, len(parts)):
        head = os.sep.join(parts[:i]) or os.sep
        if os.path.exists(head) and not os.path.isdir(head):
            return head
    return None


def check_abort(control_dir):
    """Raise :class:`AbortRequested` when the pipeline created ``RELION_JOB_ABORT_NOW``."""
    if control_dir:
        flag = pipeline_file(control_dir, ABORT_NOW_FILE)
        if os.path.exists(flag):
            try:
                os.remove(flag)
            except OSError:
                pass
            raise AbortRequested("abort requested through RELION_JOB_ABORT_NOW")


def _touch(path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w"):
        pass


def configure_logging(verbose, quiet=False):
    """Log to stdout (RELION's progress lines go there too); called only from entry points."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    level = logging.DEBUG if verbose else (logging.ERROR if quiet else logging.INFO)
    root.setLevel(level)
    # third-party chatter stays at warning level
    for name in ("matplotlib", "PIL", "numexpr", "h5py"):
        logging.getLogger(name).setLevel(logging.WARNING)


def log_parameters(prog, args):
    log.info("%s (sta %s)", prog, __version__)
    log.info(" Parameters:")
    for key, value in sorted(vars(args).items()):
        log.info("   --%s %s", key, value)


def run(prog, parser, body, argv=None, note_dir=None, comm=None):
    """Parse ``argv``, run ``body(args)`` and return the exit code.

    Parameters
    ----------
    prog : str
        Executable name used in messages.
    parser : argparse.ArgumentParser
        Built with :func:`make_parser` plus the command's own arguments.
    body : callable
        ``body(args)``; raises :class:`~sta.errors.StaError` on bad input.
    note_dir : callable or None
        ``note_dir(args)`` gives the directory for ``note.txt``, written when ``body``
        succeeded (skipped under ``--pipeline_control``, as RELION does).
    comm : communicator or None
        MPI world (from :func:`sta.parallel.mpi.world`); only rank 0 logs parameters and
        writes job files.  An error on any rank of a multi-rank job prints one line naming
        the rank and aborts the whole job.
    """
    from sta.parallel.mpi import RankMonitor, SerialComm, abort_on_error, launched_rank

    if comm is None and launched_rank() > 0:
        # a serial tool started under mpirun (e.g. relion_postprocess_mpi): one rank does the work
        return 0
    comm = comm if comm is not None else SerialComm()
    rank, size = comm.Get_rank(), comm.Get_size()
    is_leader = rank == 0
    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed its one-line error
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        control = pipeline_control_in(argv)
        if code != 0 and control and is_leader:  # not --help / --version
            try:
                _touch(pipeline_file(control, EXIT_FAILURE_FILE))
            except OSError as err:
                print(f"ERROR: {os_error_message(err, prog)}", file=sys.stderr)
        return code
    configure_logging(args.verbose, quiet=not is_leader)
    control = args.pipeline_control
    start = time.time()
    code, message = 0, ""
    monitor = RankMonitor(comm, prog, control)
    try:
        if is_leader:
            log_parameters(prog, args)
        body(args)
        if is_leader and control is None and note_dir is not None:
            directory = note_dir(args)
            if directory:
                write_note(directory, argv, prog)
    except AbortRequested as exc:
        code, message = 2, f" exiting with an abort ... ({exc})"
    except StaError as exc:
        if args.verbose:
            traceback.print_exc()
        code, message = 1, f"ERROR: {exc}"
    except KeyboardInterrupt:
        code, message = 130, "ERROR: interrupted"
    except OSError as exc:  # disk full, read-only directory, an --o that is a file, ...
        if args.verbose:
            traceback.print_exc()
        code, message = 1, f"ERROR: {os_error_message(exc, prog)}"
    except MemoryError:
        if args.verbose:
            traceback.print_exc()
        code, message = 1, f"ERROR: {prog} ran out of memory; lower --mem/--j or the box size"
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if args.verbose:
            traceback.print_exc()
        code, message = 1, (f"ERROR: {prog} failed: {type(exc).__name__}: {exc} "
                            "(run with --verbose for the traceback)")
    if code == 0 and size > 1:
        monitor.finish()
    if code != 0 and size > 1:
        if control:
            _touch(pipeline_file(control, EXIT_ABORTED_FILE if code == 2 else EXIT_FAILURE_FILE))
        abort_on_error(comm, message.replace("ERROR: ", "", 1).strip(), code)
    if message:
        print(message, file=sys.stderr)
    if is_leader:
        if control:
            name = {0: EXIT_SUCCESS_FILE, 2: EXIT_ABORTED_FILE}.get(code, EXIT_FAILURE_FILE)
            _touch(pipeline_file(control, name))
            if code == 1:
                print(f" RELION version: 5.0-compatible (sta {__version__})", file=sys.stderr)
                print(" exiting with an error ...", file=sys.stderr)
        if code == 0:
            log.info(" %s finished in %.2f s", prog, time.time() - start)
    return code
