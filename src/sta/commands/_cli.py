"""Shared plumbing of every ``sta_*`` entry point.

Each command module defines ``add_args(parser)`` and ``main(argv=None) -> int``;
``main`` calls :func:`run` with a body function.  :func:`run` owns everything that is the
same for all tools: logging set-up, ``--verbose``, ``--version``, RELION's
``--pipeline_control`` exit files, ``note.txt``, the parameter log at the start, the
timing summary at the end, and turning errors into one clear line and a non-zero exit.
"""

import argparse  # noqa: F401 (re-exported for command modules)
import logging
import os
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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def make_parser(prog, doc):
    """Argument parser with the options every sta tool shares.

    ``doc`` (the command module's docstring) is the ``--help`` description.
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=_HelpFormatter,
                                     allow_abbrev=False)
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
    """``note.txt`` as RELION's tomo programs write it (not under pipeline control)."""
    os.makedirs(directory, exist_ok=True)
    cmd = " ".join(shlex.quote(a) for a in [program_name(prog)] + list(argv))
    with open(os.path.join(directory, "note.txt"), "w") as fh:
        fh.write(f"Command:\n\n{cmd} \n")


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
        ``note_dir(args)`` gives the directory for ``note.txt`` (skipped under
        ``--pipeline_control``, as RELION does).
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
    except SystemExit as exc:  # argparse already printed a one-line usage error
        return int(exc.code or 0)
    configure_logging(args.verbose, quiet=not is_leader)
    control = args.pipeline_control
    start = time.time()
    code, message = 0, ""
    monitor = RankMonitor(comm, prog)
    try:
        if is_leader:
            log_parameters(prog, args)
            if control is None and note_dir is not None:
                directory = note_dir(args)
                if directory:
                    write_note(directory, argv, prog)
        body(args)
    except AbortRequested as exc:
        code, message = 2, f" exiting with an abort ... ({exc})"
    except StaError as exc:
        if args.verbose:
            traceback.print_exc()
        code, message = 1, f"ERROR: {exc}"
    except KeyboardInterrupt:
        code, message = 130, "ERROR: interrupted"
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
