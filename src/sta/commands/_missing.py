"""What a RELION-named alias runs while its sta tool does not exist yet.

``python -m sta.commands._missing RELION_NAME STA_TOOL [RELION's arguments...]`` runs
RELION's own program of that name when one is found later on ``PATH`` (after a one-line
note on stderr), so a project can mix sta with RELION for the steps sta lacks.  Without
one it prints one line saying that this version of sta does not implement the program, writes
``RELION_JOB_EXIT_FAILURE`` into the ``--pipeline_control`` directory when one is given (so
RELION's GUI, ccpem-pipeliner and Scipion see the job fail instead of waiting for it), and
exits 1.  ``--version`` still answers with the version line.  Under ``mpirun`` only the
first rank speaks and writes; every rank exits 1.
"""

import os
import sys
import time

from sta import __version__
from sta.commands import _cli

#: text in every alias script this module serves (such scripts are never RELION's program)
MARKER = b"sta.commands._missing"


def relion_program(name):
    """The first executable ``name`` on PATH that is not an sta alias (RELION's own), or None."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            with open(candidate, "rb") as fh:
                head = fh.read(1024)
        except OSError:
            continue
        if MARKER not in head:
            return os.path.abspath(candidate)
    return None


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print("usage: python -m sta.commands._missing RELION_NAME STA_TOOL [arguments ...]", file=sys.stderr)
        return 2
    name, tool, rest = argv[0], argv[1], argv[2:]
    if rest == ["--version"]:
        print(f"RELION version: 5.0-compatible (sta {__version__})")
        return 0
    from sta.parallel.mpi import launched_rank

    relion = relion_program(name)
    if relion:
        if launched_rank() == 0:
            print(f"{name}: not implemented in sta {__version__} yet; running {relion}", file=sys.stderr)
            sys.stderr.flush()
        os.execv(relion, [relion] + rest)
    if launched_rank() > 0:
        time.sleep(1.0)  # a failing rank makes the launcher kill the others: let rank 0 speak first
        return 1
    control = _cli.pipeline_control_in(rest)
    if control:
        os.makedirs(control, exist_ok=True)
        with open(_cli.pipeline_file(control, _cli.EXIT_FAILURE_FILE), "w"):
            pass
    print(f"ERROR: {name}: not implemented in sta {__version__} yet (it will be {tool}); "
          "run this step with RELION's own program", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
