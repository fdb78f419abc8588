"""Open MPI command lines for MPICH's hydra: the ``mpirun``/``mpiexec`` wrappers' translator.

Pipelines and front ends written for Open MPI (py2rely, Scipion host configurations) call
``mpirun --oversubscribe --bind-to none -x OMP_NUM_THREADS -n 5 relion_refine_mpi ...``.
The ``mpich`` wheel's launcher, hydra, refuses those options.  ``sta_relion_aliases``
writes ``mpirun``/``mpiexec`` wrappers that run
``python -m sta.parallel.launcher HYDRA ARGS...``: the launcher options (everything before
the program) are translated where hydra has an equivalent, the others are dropped with one
line on stderr naming them, and the program and its arguments are passed on untouched.

===================================  ==================================================
Open MPI                             hydra
===================================  ==================================================
``-np N``, ``-n N``, ``-c N``        ``-n N`` (rank counts are never dropped)
``-x VAR`` / ``-x VAR=value``        ``-genvlist VAR,...`` / ``-genv VAR value``
``--bind-to X``                      ``-bind-to X`` (none, hwthread, core, caches, socket,
                                     package, numa; ``:modifiers`` dropped)
``--map-by X``                       ``-map-by X`` for the same objects; ``node`` and
                                     ``--pernode`` -> ``-ppn 1``; ``ppr:N:node``,
                                     ``--npernode N`` -> ``-ppn N``; ``slot`` = hydra's
                                     default (dropped); other forms dropped
``-H``/``--host LIST``               ``-hosts LIST``
``--hostfile F``/``--machinefile F`` ``-f F``
``--wdir D``/``--wd D``              ``-wdir D``
``--tag-output``                     ``-prepend-rank``
``--oversubscribe``,                 dropped (hydra always allows more ranks than cores,
``--allow-run-as-root``              and runs as root)
``--mca K V``, ``--prefix D``, ...   dropped (no hydra equivalent)
===================================  ==================================================
"""

import os
import sys

#: hydra's own options that take one value (passed through; their value is not the program)
HYDRA_WITH_VALUE = frozenset({
    "-n", "-np", "-f", "-hostfile", "-machinefile", "-hosts", "-ppn", "-wdir", "-configfile",
    "-genvlist", "-envlist", "-bind-to", "-map-by", "-launcher", "-launcher-exec", "-bootstrap",
    "-bootstrap-exec", "-rmk", "-iface", "-demux", "-profile", "-gpus-per-proc", "-outfile-pattern",
    "-errfile-pattern", "-genvfile", "-nameserver", "-env-list", "-umask", "-path", "-host",
})
#: hydra's own options that take two values
HYDRA_WITH_TWO = frozenset({"-genv", "-env"})

#: Open MPI options with no hydra equivalent -> number of values they take
OPENMPI_DROPPED = {
    "-oversubscribe": 0, "-allow-run-as-root": 0, "-nooversubscribe": 0, "-report-bindings": 0,
    "-display-map": 0, "-display-allocation": 0, "-use-hwthread-cpus": 0, "-timestamp-output": 0,
    "-quiet": 0, "-q": 0, "-mca": 2, "-gmca": 2, "-prefix": 1, "-rank-by": 1, "-cpus-per-proc": 1,
    "-cpus-per-rank": 1, "-am": 1, "-tune": 1, "-output-filename": 1, "-merge-stderr-to-stdout": 0,
    "-display-devel-map": 0, "-bind-to-core": 0, "-bind-to-socket": 0, "-noprefix": 0,
    "-enable-recovery": 0, "-disable-recovery": 0, "-continuous": 0, "-personality": 1,
}

#: binding/mapping objects hydra understands (Open MPI's names)
OBJECTS = frozenset({"hwthread", "core", "l1cache", "l2cache", "l3cache", "socket", "package", "numa"})

#: why an option without a hydra counterpart is harmless to drop
_HARMLESS = {"-oversubscribe": "hydra always allows more ranks than cores",
             "-allow-run-as-root": "hydra runs as root without it"}


def _key(token):
    """``--bind-to`` and ``-bind-to`` are one option; ``--opt=value`` splits at '='."""
    name = token.split("=", 1)[0]
    return "-" + name.lstrip("-")


def translate(argv):
    """Translate an Open MPI launcher command line for hydra.

    Parameters
    ----------
    argv : list of str
        The arguments given to ``mpirun`` (without ``mpirun`` itself).

    Returns
    -------
    (list of str, list of str)
        hydra's arguments, and the options dropped (as written, with their values; with a
        reason in brackets where dropping changes nothing).
    """
    out, dropped, genvlist = [], [], []
    i = 0
    args = list(argv)

    def values(k, count, inline):
        """The ``count`` values of the option at ``k`` (``--opt=v`` counts for the first)."""
        vals = [inline] if inline is not None else []
        need = count - len(vals)
        got = args[k + 1:k + 1 + need]
        if len(got) < need:
            raise ValueError(f"{args[k]}: expected {count} value(s)")
        return vals + got, 1 + need

    while i < len(args):
        tok = args[i]
        if not tok.startswith("-") or tok in ("-", "--"):
            if tok == "--":
                i += 1
            break
        key = _key(tok)
        inline = tok.split("=", 1)[1] if "=" in tok and tok.startswith("--") else None
        if key in ("-np", "-n", "-c"):
            (v,), used = values(i, 1, inline)
            out += ["-n", v]
        elif key == "-x":
            (v,), used = values(i, 1, inline)
            name, eq, value = v.partition("=")
            if eq:
                out += ["-genv", name, value]
            else:
                genvlist.append(name)
        elif key in ("-bind-to", "-map-by"):
            (v,), used = values(i, 1, inline)
            obj, _, modifier = v.partition(":")
            obj = obj.lower()
            if key == "-map-by" and obj == "node":
                out += ["-ppn", "1"]
            elif key == "-map-by" and obj == "ppr" and v.lower().endswith(":node") and v.count(":") == 2:
                out += ["-ppn", v.split(":")[1]]
            elif key == "-map-by" and obj == "slot" and not modifier:
                dropped.append(f"{tok}{'' if inline is not None else ' ' + v} (hydra's default)")
            elif obj in OBJECTS or (key == "-bind-to" and obj == "none"):
                out += [key, obj]
                if modifier:
                    dropped.append(f"the modifier :{modifier} of {key} {v}")
            else:
                dropped.append(f"{tok}{'' if inline is not None else ' ' + v}")
        elif key in ("-npernode", "-N"):
            (v,), used = values(i, 1, inline)
            out += ["-ppn", v]
        elif key == "-pernode":
            out += ["-ppn", "1"]
            used = 1
        elif key in ("-H", "-host"):
            (v,), used = values(i, 1, inline)
            out += ["-hosts", v]
        elif key in ("-hostfile", "-machinefile", "-default-hostfile"):
            (v,), used = values(i, 1, inline)
            out += ["-f", v]
        elif key in ("-wdir", "-wd"):
            (v,), used = values(i, 1, inline)
            out += ["-wdir", v]
        elif key == "-tag-output":
            out.append("-prepend-rank")
            used = 1
        elif key in OPENMPI_DROPPED:
            vals, used = values(i, OPENMPI_DROPPED[key], inline)
            text = " ".join([tok] + (vals if inline is None else vals[1:]))
            dropped.append(f"{text} ({_HARMLESS[key]})" if key in _HARMLESS else text)
        elif key in HYDRA_WITH_TWO:
            used = 3
            out += args[i:i + used]
        elif key in HYDRA_WITH_VALUE and inline is None:
            used = 2
            out += args[i:i + used]
        else:  # a hydra option without a value (or one we do not know): hydra judges it
            used = 1
            out.append(tok)
        i += used
    if genvlist:
        out = ["-genvlist", ",".join(dict.fromkeys(genvlist))] + out
    return out + args[i:], dropped


def main(argv=None):
    """``python -m sta.parallel.launcher HYDRA [mpirun arguments...]``: exec hydra."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m sta.parallel.launcher HYDRA [mpirun arguments ...]", file=sys.stderr)
        return 2
    hydra, rest = argv[0], argv[1:]
    try:
        args, dropped = translate(rest)
    except ValueError as err:
        print(f"mpirun (sta wrapper for MPICH hydra): ERROR: {err}", file=sys.stderr)
        return 2
    if dropped:
        print("mpirun (sta wrapper for MPICH hydra): dropped Open MPI options without a hydra "
              f"equivalent: {'; '.join(dropped)}", file=sys.stderr)
    sys.stderr.flush()
    os.execv(hydra, [hydra] + args)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
