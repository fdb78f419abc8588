"""Fill a RELION queue template and submit it (what RELION's GUI does with "Submit to queue").

The template (--template FILE, default $RELION_QSUB_TEMPLATE; or slurm, pbs, sge, lsf for
the templates in the repository's jobscripts/) is copied to <jobdir>run_submit.script with
RELION's literal substitutions: XXXmpinodesXXX = --mpi, XXXthreadsXXX = --threads,
XXXcoresXXX = mpi x threads, XXXdedicatedXXX = --dedicated, XXXnodesXXX =
ceil(cores / dedicated), XXXnameXXX = <jobdir>, XXXoutfileXXX = <jobdir>run.out,
XXXerrfileXXX = <jobdir>run.err, XXXqueueXXX = --queue, XXXextraKXXX = --extraK.
Lines with XXXcommandXXX follow RELION's rule (src/pipeline_jobs.cpp): for every command, in
order, if it runs a RELION or sta program that is MPI-parallel (relion_*_mpi, or an sta tool
that distributes work over ranks) or --mpi is 1, the template line is written with the
command in place of XXXcommandXXX (so "mpirun -n XXXmpinodesXXX XXXcommandXXX" becomes
"mpirun -n 5 sta_refine ..."); any other command (a serial program while --mpi > 1, or a
plain shell command) replaces the whole line.  Any XXX...XXX left is an error.  The script
is then submitted with --submit_command (RELION runs "<qsub command> <script> &"), or only
printed with --print.  The command is written as given: add --pipeline_control <jobdir>
yourself to get RELION_JOB_EXIT_* files.

Example:
  sta_submit --template slurm --mpi 5 --threads 8 --queue gpu --extra1 1-00:00:00 --extra2 '' \\
      --name Refine3D/job010/ -- sta_refine --o Refine3D/job010/run --auto_refine ... --j 8
"""

import logging
import math
import os
import sys
import re
import shlex
import subprocess

from sta.commands import _cli
from sta.errors import InputError

log = logging.getLogger(__name__)

PROG = "sta_submit"

# the shipped templates: jobscripts/ of the source tree (editable install), else the copy
# installed under <prefix>/share/sta/jobscripts
_SOURCE_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                                 os.pardir, "jobscripts")
TEMPLATE_DIR = (_SOURCE_TEMPLATES if os.path.isdir(_SOURCE_TEMPLATES)
                else os.path.join(sys.prefix, "share", "sta", "jobscripts"))
SHIPPED = ("slurm", "pbs", "sge", "lsf")
_LEFTOVER = re.compile(r"XXX[A-Za-z0-9_]+XXX")
_STATED = "%(default).0s"  # renders as nothing: the help states the default itself


def add_args(parser):
    t = parser.add_argument_group("Template")
    t.add_argument("--template", default=None, metavar="FILE",
                   help="queue template (default: $RELION_QSUB_TEMPLATE); slurm, pbs, sge or lsf "
                        "name the templates in jobscripts/" + _STATED)
    t.add_argument("--name", default=None, metavar="JOBDIR",
                   help="job directory, e.g. Refine3D/job010/ (default: the command's "
                        "--pipeline_control, else the directory of its --o)" + _STATED)
    t.add_argument("--print", dest="print_only", action="store_true",
                   help="write <jobdir>run_submit.script and print it; do not submit")
    t.add_argument("--submit_command", default=None, metavar="CMD",
                   help="submission command (default: $RELION_QSUB_COMMAND, else sbatch); "
                        "ending in '<' feeds the script on stdin (LSF: 'bsub <')" + _STATED)
    r = parser.add_argument_group("Resources")
    r.add_argument("--mpi", type=_cli.positive_int, default=1, help="number of MPI ranks (XXXmpinodesXXX)")
    r.add_argument("--threads", type=_cli.positive_int, default=1,
                   help="threads per rank (XXXthreadsXXX); give the command the same --j")
    r.add_argument("--queue", default=None,
                   help="queue / partition name (default: $RELION_QUEUE_NAME, else openmpi)" + _STATED)
    r.add_argument("--dedicated", type=_cli.positive_int, default=None,
                   help="minimum dedicated cores per node (default: $RELION_MINIMUM_DEDICATED, else 1)" + _STATED)
    r.add_argument("--extra1", default=None,
                   help="value of XXXextra1XXX (default: $RELION_QSUB_EXTRA1_DEFAULT)" + _STATED)
    r.add_argument("--extra2", default=None,
                   help="value of XXXextra2XXX (default: $RELION_QSUB_EXTRA2_DEFAULT)" + _STATED)
    r.add_argument("--extra", action="append", default=[], metavar="K=VALUE",
                   help="value of XXXextraKXXX for any K (repeatable)" + _STATED)
    c = parser.add_argument_group("Commands")
    c.add_argument("--command", dest="commands", action="append", default=[], metavar="CMD",
                   help="a command line (shell syntax, repeatable), run before the one after --" + _STATED)
    c.add_argument("argv", nargs="*", metavar="-- COMMAND",
                   help="the command to run, after a literal --, e.g. -- sta_refine --o ..." + _STATED)


# ----------------------------------------------------------------- values

def _env(name, fallback):
    value = os.environ.get(name)
    return value if value not in (None, "") else fallback


def _template_path(value):
    value = value or _env("RELION_QSUB_TEMPLATE", None)
    if not value:
        raise InputError("no template: give --template FILE (or set $RELION_QSUB_TEMPLATE)")
    if not os.path.exists(value) and value in SHIPPED:
        value = os.path.normpath(os.path.join(TEMPLATE_DIR, f"{value}.sh"))
    if not os.path.isfile(value):
        raise InputError(f"--template {value}: file not found")
    return value


def _extras(args):
    extras = {}
    for k in range(1, 100):
        default = os.environ.get(f"RELION_QSUB_EXTRA{k}_DEFAULT")
        if default is not None:
            extras[k] = default
    for k, value in ((1, args.extra1), (2, args.extra2)):
        if value is not None:
            extras[k] = value
    for item in args.extra:
        key, sep, value = item.partition("=")
        if not sep or not key.isdigit() or int(key) < 1:
            raise InputError(f"--extra {item!r}: expected K=VALUE with K a number >= 1")
        extras[int(key)] = value
    return extras


def _split(command):
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise InputError(f"--command {command!r}: {exc}") from None


def _option(argv, name):
    """Value of ``--name VALUE`` in an argument list (None when absent)."""
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return None


def _job_dir(args, commands):
    name = args.name
    if not name:
        for argv in commands:
            control = _option(argv, "--pipeline_control")
            out = _option(argv, "--o")
            if control:
                name = control
            elif out:
                name = out if out.endswith("/") else os.path.dirname(out)
            if name:
                break
    if not name:
        raise InputError("no job directory: give --name JOBDIR (or --pipeline_control/--o in the command)")
    return name if name.endswith("/") else name + "/"


def _program(argv):
    """Executable name of a command (basename of its first word that is not VAR=value)."""
    for word in argv:
        if "=" not in word.split("/")[0]:
            return os.path.basename(word)
    return ""


def runs_in_template_line(argv, nmpi):
    """RELION's rule: does this command go into the XXXcommandXXX line (else it replaces it)?"""
    from sta.commands.relion_aliases import MPI_MODULES

    prog = _program(argv)
    if prog.startswith("relion_"):
        return nmpi == 1 or prog.endswith("_mpi")
    if prog.startswith("sta_"):
        return nmpi == 1 or prog[len("sta_"):] in MPI_MODULES
    return False


# ----------------------------------------------------------------- filling

def fill_template(text, values, commands, where="template"):
    """Return the filled script.

    Parameters
    ----------
    text : str
        Template text.
    values : dict
        ``{"XXXmpinodesXXX": "5", ...}``: literal replacements of every occurrence.
    commands : list of (str, bool)
        Command lines, in order, and whether each goes into the XXXcommandXXX line (True)
        or replaces that whole line (False).
    where : str
        Template name for messages.
    """
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for key, value in values.items():
            line = line.replace(key, value)
        leftover = _LEFTOVER.search(line.replace("XXXcommandXXX", ""))
        if leftover:
            raise InputError(f"{where} line {lineno}: {leftover.group(0)} has no value "
                             "(give it, e.g. with --extra K=VALUE)")
        if "XXXcommandXXX" not in line:
            out.append(line)
            continue
        for command, in_line in commands:
            out.append(line.replace("XXXcommandXXX", command, 1) if in_line else command)
    return "\n".join(out) + "\n"


def _values(args, job_dir, extras, text):
    nthreads = args.threads
    cores = args.mpi * nthreads
    dedicated = args.dedicated
    if dedicated is None:
        try:
            dedicated = _cli.positive_int(_env("RELION_MINIMUM_DEDICATED", "1"))
        except _cli.argparse.ArgumentTypeError as exc:
            raise InputError(f"$RELION_MINIMUM_DEDICATED: {exc}") from None
    values = {
        "XXXmpinodesXXX": str(args.mpi), "XXXthreadsXXX": str(nthreads), "XXXcoresXXX": str(cores),
        "XXXdedicatedXXX": str(dedicated), "XXXnodesXXX": str(math.ceil(cores / dedicated)),
        "XXXnameXXX": job_dir, "XXXerrfileXXX": job_dir + "run.err", "XXXoutfileXXX": job_dir + "run.out",
        "XXXqueueXXX": args.queue if args.queue is not None else _env("RELION_QUEUE_NAME", "openmpi"),
    }
    for k in sorted({int(m) for m in re.findall(r"XXXextra(\d+)XXX", text)}):
        if k not in extras:
            raise InputError(f"the template uses XXXextra{k}XXX: give --extra{k} VALUE"
                             if k <= 2 else f"the template uses XXXextra{k}XXX: give --extra {k}=VALUE")
        values[f"XXXextra{k}XXX"] = extras[k]
    return values


def _check_threads(argv_list, nthreads):
    for argv in argv_list:
        j = _option(argv, "--j")
        if j is not None and j != str(nthreads):
            log.warning(" WARNING: %s has --j %s but --threads %d reserves %d per rank",
                        _program(argv), j, nthreads, nthreads)


def _body(args):
    commands = [_split(c) for c in args.commands] + ([args.argv] if args.argv else [])
    texts = list(args.commands) + ([shlex.join(args.argv)] if args.argv else [])
    if not commands:
        raise InputError("no command: give it after -- (e.g. -- sta_refine --o ...) or with --command")
    template = _template_path(args.template)
    with open(template) as fh:
        text = fh.read()
    job_dir = _job_dir(args, commands)
    values = _values(args, job_dir, _extras(args), text)
    _check_threads(commands, args.threads)
    filled = fill_template(text, values, [(t, runs_in_template_line(c, args.mpi))
                                          for t, c in zip(texts, commands)], where=template)
    script = job_dir + "run_submit.script"
    from sta.io.atomic import write_text_atomic

    write_text_atomic(script, filled)
    os.chmod(script, 0o755)
    log.info(" Written: %s (from %s)", script, template)
    if args.print_only:
        print(filled, end="")
        return
    submit = shlex.split(args.submit_command or _env("RELION_QSUB_COMMAND", "sbatch"))
    _submit(submit, script)


def _submit(submit, script):
    """Run ``submit script`` (or ``submit < script`` when the command ends in ``<``, for LSF)."""
    stdin_file = submit and submit[-1] == "<"
    cmd = submit[:-1] if stdin_file else submit + [script]
    shown = shlex.join(cmd) + (f" < {script}" if stdin_file else "")
    if not cmd:
        raise InputError("--submit_command is empty")
    try:
        with open(script) if stdin_file else open(os.devnull) as stdin:
            res = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True)
    except OSError as exc:
        raise InputError(f"cannot run the submit command {shown!r}: {exc}") from exc
    if res.stdout:
        print(res.stdout, end="")
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise InputError(f"{shown} exited with {res.returncode}: {last}")
    log.info(" Submitted: %s", shown)


def main(argv=None):
    parser = _cli.make_parser(PROG, __doc__)
    add_args(parser)
    return _cli.run(PROG, parser, _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
