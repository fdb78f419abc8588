"""Create executables named as RELION's programs that run the sta tools (drop-in on PATH).

Writes one small shell script per RELION program name into --o, for example
``relion_tomo_reconstruct_particle_mpi`` containing
``exec <python> -m sta.commands.reconstruct_particle "$@"``: RELION's argument list is
passed on unchanged, so a RELION GUI, ccpem-pipeliner, py2rely or a queue template that
calls ``mpirun -n 5 relion_tomo_reconstruct_particle_mpi --t ... --p ...`` runs sta once
the directory is first on PATH.  ``_mpi`` names run the same module as the plain names
(every sta tool works with and without mpirun).  A name is written only when its sta tool
exists in this installation (tools still to come are listed by --list and appear when
this command is run again after an update).  Every alias answers ``--version`` with
``RELION version: 5.0-compatible (sta X.Y.Z)`` and ``--help`` with the sta tool's help.
The scripts call the Python interpreter by its absolute path (--python, default: the
interpreter running this command) with PYTHONSAFEPATH=1, so a folder in the RELION
project cannot shadow a package.

When the MPI launcher that goes with that interpreter is MPICH's hydra (the ``mpich`` wheel
of the ``mpi`` extra), ``mpirun`` and ``mpiexec`` wrappers are written too: pipelines such as
py2rely call ``mpirun --oversubscribe -n 5 ...``, an Open MPI option that hydra rejects (and
does not need: it always allows more ranks than cores); the wrappers drop it and run hydra.

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

#: RELION program name -> module in sta.commands (written only when the module exists)
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


def write_alias(directory, name, module, python):
    """Write one executable alias atomically; return its path."""
    return _write_script(os.path.join(directory, name), script_text(name, module, python))


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


def launcher_text(name, launcher):
    """Wrapper that drops Open MPI's ``--oversubscribe`` and runs hydra."""
    return (f"#!/bin/sh\n"
            f"# {name}: MPICH hydra for RELION pipelines (sta {__version__}), written by {PROG}.\n"
            f"# Drops Open MPI's --oversubscribe, which hydra rejects and does not need.\n"
            f"for a; do shift; case \"$a\" in --oversubscribe|-oversubscribe) ;; *) set -- \"$@\" \"$a\" ;; esac; done\n"
            f"exec {shlex.quote(launcher)} \"$@\"\n")


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
    return {name: _write_script(os.path.join(directory, name), launcher_text(name, launcher))
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
    written = {name: write_alias(directory, name, mod, python) for name, mod in available_aliases().items()}
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
            state = "available" if module_available(mod) else "not yet available"
            print(f"{name:40s} sta_{mod:24s} {state}")
        return
    if not args.o:
        raise InputError("--o DIR is required (the directory to write the aliases into)")
    written = create_aliases(args.o, args.python)
    for name, path in written.items():
        log.info(" Written: %s -> %s", path, f"sta_{ALIASES[name]}" if name in ALIASES else "MPICH hydra")
    missing = sorted({n for n in ALIASES if n not in written})
    if missing:
        log.info(" Not available yet in this version (not written): %s", ", ".join(missing))
    log.info(" Put them first on PATH:  export PATH=%s:$PATH", shlex.quote(os.path.abspath(args.o)))


def main(argv=None):
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
