"""Create executables named as RELION's programs that run the sta tools (drop-in on PATH).

Writes one small shell script per RELION program name into --o, for example
``relion_tomo_reconstruct_particle_mpi`` containing
``exec <python> -m sta.commands.reconstruct_particle "$@"``: RELION's argument list is
passed on unchanged, so a RELION GUI, ccpem-pipeliner, py2rely, Scipion's reliontomo plugin
or a queue template that calls ``mpirun -n 5 relion_tomo_reconstruct_particle_mpi --t ...``
runs sta once the directory is first on PATH.  ``_mpi`` names run the same module as the
plain names (every sta tool works with and without mpirun).  Every RELION name a client
may call is written.  A name whose sta tool does not exist yet in this version (see --list)
runs RELION's own program of that name when one is found later on PATH (keep RELION's bin
after this directory to mix the two); without one it prints one line saying so, writes
RELION_JOB_EXIT_FAILURE under --pipeline_control and exits 1, so the pipeline sees the step
fail instead of a launcher's "No such file".
Every alias answers ``--version`` with ``RELION version: 5.0-compatible (sta X.Y.Z)``; the
available ones answer ``--help`` with the sta tool's help.  The scripts call the Python
interpreter by its absolute path (--python, default: the interpreter running this
command) with PYTHONSAFEPATH=1, so a folder in the RELION project cannot shadow a package.

When the MPI launcher that goes with that interpreter is MPICH's hydra (the ``mpich`` wheel
of the ``mpi`` extra), ``mpirun`` and ``mpiexec`` wrappers are written too: pipelines and
Scipion host configurations written for Open MPI pass options hydra rejects
(``--oversubscribe``, ``--allow-run-as-root``, ``--bind-to none``, ``--map-by ...``,
``--mca key value``, ``-x VAR``).  The wrappers translate them where hydra has an equivalent
(``-x VAR`` -> ``-genvlist VAR``, ``--bind-to``/``--map-by`` -> hydra's ``-bind-to``/
``-map-by``/``-ppn``, ``-H`` -> ``-hosts``) and drop the others with one line on stderr
naming them; rank counts (``-n``, ``-np``, ``-c``) are always passed on.

Example:
  sta_relion_aliases --o ~/sta-relion-bin && export PATH=~/sta-relion-bin:$PATH
  relion_mask_create --version
"""

import importlib.util
import logging
import os
import shlex
import stat
import sys

from sta import __version__
from sta.commands import _cli
from sta.errors import InputError
from sta.io.atomic import atomic_path

log = logging.getLogger(__name__)

PROG = "sta_relion_aliases"

#: RELION program name -> module in sta.commands (a "not implemented yet" script while the
#: module does not exist)
ALIASES = {
    "relion_tomo_subtomo": "subtomo",
    "relion_tomo_subtomo_mpi": "subtomo",
    "relion_tomo_reconstruct_particle": "reconstruct_particle",
    "relion_tomo_reconstruct_particle_mpi": "reconstruct_particle",
    "relion_refine": "refine",
    "relion_refine_mpi": "refine",
    "relion_postprocess": "postprocess",
    "relion_postprocess_mpi": "postprocess",
    "relion_mask_create": "mask_create",
    "relion_star_handler": "star_handler",
    "relion_tomo_refine_ctf": "refine_ctf",
    "relion_tomo_refine_ctf_mpi": "refine_ctf",
    "relion_tomo_align": "align",
    "relion_tomo_align_mpi": "align",
    "relion_tomo_reconstruct_tomogram": "reconstruct_tomogram",
    "relion_tomo_reconstruct_tomogram_mpi": "reconstruct_tomogram",
    "relion_tomo_make_optimisation_set": "make_optimisation_set",
    "relion_align_symmetry": "align_symmetry",
    "relion_image_handler": "image_handler",
    "relion_reconstruct": "reconstruct",
    "relion_reconstruct_mpi": "reconstruct",
}

#: sta modules that distribute their work over MPI ranks (sta_submit puts these under
#: mpirun); the others do the whole job in one process
MPI_MODULES = frozenset({"subtomo", "reconstruct_particle", "refine", "refine_ctf", "align",
                         "reconstruct_tomogram"})


def module_available(module):
    """True when ``sta.commands.<module>`` exists in this installation."""
    return importlib.util.find_spec(f"sta.commands.{module}") is not None


def available_aliases():
    """``{RELION name: module}`` of the aliases whose sta tool exists, in table order."""
    present = {mod: module_available(mod) for mod in set(ALIASES.values())}
    return {name: mod for name, mod in ALIASES.items() if present[mod]}


def script_text(name, module, python):
    """The shell script that runs ``sta.commands.<module>`` with the caller's argv."""
    return (f"#!/bin/sh\n"
            f"# {name}: RELION-compatible entry point of sta_{module} (sta {__version__}),\n"
            f"# written by {PROG}.\n"
            f"STA_ARGV0={shlex.quote(name)} PYTHONSAFEPATH=1 exec {shlex.quote(python)} -m sta.commands.{module} \"$@\"\n")


def find_launcher(python, directory):
    """Absolute path of the MPI launcher going with ``python`` (beside it, else on PATH outside
    ``directory``), or None."""
    import shutil

    beside = os.path.join(os.path.dirname(python), "mpirun")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    skip = os.path.realpath(directory)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and os.path.realpath(p) != skip)
    return shutil.which("mpirun", path=path)


def is_hydra(launcher):
    """True when ``launcher --version`` says MPICH's hydra."""
    import subprocess

    try:
        res = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return "HYDRA" in (res.stdout + res.stderr)


def launcher_text(name, launcher, python):
    """Wrapper that translates Open MPI options for hydra (:mod:`sta.parallel.launcher`)."""
    return (f"#!/bin/sh\n"
            f"# {name}: MPICH hydra for RELION pipelines (sta {__version__}), written by {PROG}.\n"
            f"# Translates Open MPI launcher options (-x, --bind-to, --map-by, ...) for hydra and\n"
            f"# drops those without an equivalent (--oversubscribe, --mca, ...), naming them on stderr.\n"
            f"PYTHONSAFEPATH=1 exec {shlex.quote(python)} -m sta.parallel.launcher {shlex.quote(launcher)} \"$@\"\n")


def missing_text(name, module, python):
    """The script of a RELION name whose sta tool does not exist yet (:mod:`sta.commands._missing`)."""
    return (f"#!/bin/sh\n"
            f"# {name}: sta_{module} is not implemented in sta {__version__} yet; written by {PROG}\n"
            f"# so that a pipeline calling it gets a clear error and RELION_JOB_EXIT_FAILURE.\n"
            f"PYTHONSAFEPATH=1 exec {shlex.quote(python)} -m sta.commands._missing {shlex.quote(name)} "
            f"sta_{module} \"$@\"\n")


def _write_script(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
        mode = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        os.chmod(tmp, mode)
    return path


def create_launchers(directory, python):
    """``mpirun``/``mpiexec`` wrappers in ``directory`` when the launcher is hydra; ``{name: path}``."""
    launcher = find_launcher(python, directory)
    if launcher is None or not is_hydra(launcher):
        return {}
    return {name: _write_script(os.path.join(directory, name), launcher_text(name, launcher, python))
            for name in ("mpirun", "mpiexec")}


def create_aliases(directory, python=None):
    """Write every available alias into ``directory`` (and the launcher wrappers when the MPI
    launcher is hydra); return ``{name: path}``."""
    python = os.path.abspath(python or sys.executable)
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise InputError(f"--python {python}: not an executable file")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise InputError(f"--o {directory}: exists and is not a directory")
    os.makedirs(directory, exist_ok=True)
    available = available_aliases()
    written = {}
    for name, mod in ALIASES.items():
        text = script_text(name, mod, python) if name in available else missing_text(name, mod, python)
        written[name] = _write_script(os.path.join(directory, name), text)
    written.update(create_launchers(directory, python))
    return written


def add_args(parser):
    g = parser.add_argument_group("I/O")
    g.add_argument("--o", default=None, metavar="DIR",
                   help="directory for the aliases (created; required unless --list); put it first on "
                        "PATH%(default).0s")
    g.add_argument("--python", default=None, metavar="PATH",
                   help="Python interpreter the aliases run (default: the one running this command)"
                        "%(default).0s")
    g.add_argument("--list", action="store_true",
                   help="print every RELION name, its sta tool and whether it is available; write nothing")


def _body(args):
    if args.list:
        for name, mod in ALIASES.items():
            state = "available" if module_available(mod) else "not implemented yet"
            print(f"{name:40s} sta_{mod:24s} {state}")
        return
    if not args.o:
        raise InputError("--o DIR is required (the directory to write the aliases into)")
    written = create_aliases(args.o, args.python)
    available = available_aliases()
    for name, path in written.items():
        log.info(" Written: %s -> %s", path, f"sta_{ALIASES[name]}" if name in available else
                 "MPICH hydra (Open MPI options translated)" if name not in ALIASES else "not implemented yet")
    missing = [n for n in ALIASES if n not in available]
    if missing:
        log.info(" Not implemented in this version (they print one line, write RELION_JOB_EXIT_FAILURE "
                 "under --pipeline_control and exit 1): %s", ", ".join(missing))
    log.info(" Put them first on PATH:  export PATH=%s:$PATH", shlex.quote(os.path.abspath(args.o)))


def main(argv=None):
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
