"""STAR files as RELION 5 reads and writes them.

Reading
    :func:`read_star` returns a :class:`StarFile`: an ordered mapping ``name -> StarTable``
    in file order.  Each :class:`StarTable` holds a :class:`pandas.DataFrame` whose columns
    are the labels without the leading underscore (``"rlnTomoName"``) and whose rows are in
    file order.  Column types follow :mod:`sta.io.labels`: known integer and boolean labels
    become ``int64`` (booleans as 0/1), known floating-point labels ``float64``, strings
    Python ``str`` objects (``object`` dtype), and vector labels (``rlnTomoVisibleFrames``,
    ``rlnTomoProjX`` ...) keep their text, e.g. ``"[0,1,1]"`` (see :func:`parse_int_vector`).
    Unknown labels are typed from their values: ``int64`` if all are integers, else
    ``float64`` if all are numbers, else ``str``.

    The reader accepts what real files contain: no ``# version`` line or one inside a
    block, tabs, blank lines between labels and rows, empty or dotted/slashed block names
    (``data_``, ``data_TS_17.tomostar``, ``data_TS_01/17``), ``_rlnX #n`` and bare ``_rlnX``
    labels, list (key value) and loop tables, CRLF line ends, quoted strings and repeated
    block names (the second one is stored under the key ``name#2``; ``table.name`` stays
    ``name``).

Writing
    :func:`write_star` produces RELION 5's layout (``MetaDataTable::write``): per table a
    blank line, ``# version 50001``, a blank line, ``data_<name>``, a blank line, then
    ``loop_ `` + ``_label #n `` lines + rows whose values are right-aligned to 10
    characters and followed by one space, or ``_label`` + padding + value lines for list
    tables; every table ends with a line holding a single space.  Numbers use RELION's
    formats (``%12.6f`` / ``%12.5f`` for negatives, ``%12.6e`` / ``%12.5e`` when
    ``0 < |v| < 0.001`` or ``|v| > 100000``, ints ``%12d``), except that a float whose
    RELION text would lose more than 1e-6 of its value (relative) is written in ``%12.Ne``
    form with the fewest digits N >= 6 that give the value back exactly, so that a
    write -> read round trip keeps every float to 1e-6 and re-writing is stable.  Like
    RELION, empty tables are not written.  Files are written atomically.

Paths stored in STAR files are relative to the RELION project directory (the directory
RELION ran in); :func:`resolve_path` turns them into file-system paths.
"""

import collections
import logging
import os
import re

import numpy as np
import pandas as pd

from sta.errors import FormatError, InputError
from sta.io import labels as _labels
from sta.io.atomic import atomic_path
from sta.io.image_name import parse_image_name

logger = logging.getLogger(__name__)

#: STAR format version written in the ``# version`` line (RELION 5)
RELION_VERSION = 50001

_VERSION_RE = re.compile(r"#\s*version\s+\d+\s*\Z")
_BOOL_WORDS = {"true": 1, "false": 0, "yes": 1, "no": 0}
_REL_TOL = 0.99e-6  # a little inside the promised 1e-6, against rounding at the edge


# --------------------------------------------------------------------------------------
# tables


class StarTable:
    """One ``data_`` block: a loop table or a list (key value) table.

    Attributes
    ----------
    name : str
        Block name without ``data_`` (``""`` for a bare ``data_``).
    df : pandas.DataFrame
        Columns named by label without the underscore; rows in file order.  A list table
        has exactly one row.
    loop : bool
        True for ``loop_`` tables, False for list tables.
    """

    def __init__(self, name, df, loop=True):
        self.name = str(name)
        self.df = df
        self.loop = bool(loop)

    def as_dict(self):
        """Return ``{label: value}`` of a list table (or a loop table with one row).

        Values are plain Python objects (``int``, ``float``, ``str``).
        """
        if len(self.df) != 1:
            raise InputError(
                f"table data_{self.name} has {len(self.df)} rows; expected a single row"
            )
        return {col: _to_python(self.df[col].iloc[0]) for col in self.df.columns}

    @property
    def labels(self):
        """Column labels, in order."""
        return list(self.df.columns)

    def __len__(self):
        return len(self.df)

    def __repr__(self):
        kind = "loop" if self.loop else "list"
        shape = f"{len(self.df)} rows x {self.df.shape[1]} columns"
        return f"StarTable(name={self.name!r}, {kind}, {shape})"


class StarFile(collections.OrderedDict):
    """Ordered mapping ``key -> StarTable`` of the tables of one STAR file, in file order.

    The key is the block name, with ``#2``, ``#3`` ... appended for repeated names.

    Attributes
    ----------
    comments : list of str
        Comment lines (with their ``#``) found before the first ``data_`` block, other than
        ``# version NNN``; re-written at the top of the file by :func:`write_star`.
    path : str
        The file that was read (``""`` for a file built in memory).
    """

    def __init__(self, *args, comments=None, path="", **kwargs):
        super().__init__(*args, **kwargs)
        self.comments = list(comments or [])
        self.path = str(path)

    def add(self, table):
        """Append ``table`` under its name (``#k`` appended if taken); return the key."""
        key = table.name
        k = 2
        while key in self:
            key = f"{table.name}#{k}"
            k += 1
        self[key] = table
        return key

    def loop_tables(self):
        """Return the loop tables, in file order."""
        return [t for t in self.values() if t.loop]

    def __repr__(self):
        return f"StarFile({self.path!r}, tables={list(self.keys())})"


def list_table(name, mapping):
    """Build a list (key value) :class:`StarTable` from a dict ``{label: value}``."""
    data = {}
    for label, value in mapping.items():
        if isinstance(value, str):
            data[label] = pd.Series([value], dtype=object)
        else:
            data[label] = [_to_python(value)]
    return StarTable(name, pd.DataFrame(data, index=pd.RangeIndex(1)), loop=False)


def loop_table(name, df):
    """Wrap a DataFrame as a loop :class:`StarTable` (the DataFrame is not copied)."""
    return StarTable(name, df, loop=True)


# --------------------------------------------------------------------------------------
# paths and vectors


def resolve_path(path, project_dir=None):
    """Return the file-system path of a path written in a STAR file.

    Parameters
    ----------
    path : str
        Path as stored in the STAR file (relative to the RELION project directory, or
        absolute).
    project_dir : str, optional
        The RELION project directory; default: the current working directory.
    """
    path = os.fspath(path)
    if os.path.isabs(path):
        return path
    return os.path.join(os.fspath(project_dir) if project_dir is not None else os.getcwd(), path)


def split_image_name(name, where=None):
    """Split RELION's ``[n@]file[:type]`` image reference into ``(file, index)``.

    The type suffix (``:mrcs``, ``:mrc``) is checked and removed: see
    :func:`sta.io.image_name.parse_image_name`.

    Returns
    -------
    (str, int or None)
        The file name and the 1-based section number, or ``None`` without an ``n@`` prefix.
    """
    parsed = parse_image_name(name, where)
    return parsed.path, parsed.section


def _parse_vector(text, dtype, what):
    if isinstance(text, (list, tuple, np.ndarray)):
        return np.asarray(text, dtype=dtype)
    s = str(text).strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    s = s.strip()
    if not s:
        return np.zeros(0, dtype=dtype)
    try:
        if dtype is np.int64:
            return np.array([int(float(v)) if "." in v or "e" in v.lower() else int(v)
                             for v in s.split(",")], dtype=np.int64)
        return np.array([float(v) for v in s.split(",")], dtype=np.float64)
    except ValueError as err:
        raise FormatError(f"cannot parse {text!r} as {what} vector '[a,b,...]'") from err


def parse_int_vector(text):
    """Parse a RELION integer vector such as ``"[0,1,1]"`` into an ``int64`` array."""
    return _parse_vector(text, np.int64, "an integer")


def parse_float_vector(text):
    """Parse a RELION floating-point vector such as ``"[0.5,1,-2e-05]"`` into ``float64``."""
    return _parse_vector(text, np.float64, "a floating-point")


def format_vector(values):
    """Format a sequence as RELION writes vectors: ``[v0,v1,...]``, no spaces, ``[]`` if empty.

    Integers are written as integers, floats with 12 significant digits (C++ stream with
    ``setprecision(12)``).
    """
    if isinstance(values, str):
        return values
    arr = np.asarray(values)
    if arr.size == 0:
        return "[]"
    if arr.dtype.kind in "iub":
        return "[" + ",".join(str(int(v)) for v in arr.ravel().tolist()) + "]"
    return "[" + ",".join(f"{float(v):.12g}" for v in arr.ravel().tolist()) + "]"


# --------------------------------------------------------------------------------------
# reading


def read_star(path, *, strict=True):
    """Read every table of a STAR file.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.
    strict : bool
        If True (default) malformed content raises :class:`~sta.errors.FormatError`
        (naming the file, table and line); if False bad rows are dropped with a logged
        warning and unparseable numbers of known labels are kept as strings.

    Returns
    -------
    StarFile

    Raises
    ------
    InputError
        The file does not exist or cannot be opened.
    FormatError
        The file is empty, not text, or malformed: a row with a different number of values
        than labels, a file ending inside a loop header, a label outside a ``data_`` block,
        a value that does not parse as the type of its (known) label.
    """
    path = os.fspath(path)
    text = _read_text(path)
    return _Parser(path, strict).parse(text)


def _read_text(path):
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError as err:
        raise InputError(f"{path}: file not found") from err
    except IsADirectoryError as err:
        raise InputError(f"{path}: is a directory, expected a STAR file") from err
    except OSError as err:
        raise InputError(f"{path}: cannot open: {err.strerror}") from err
    if b"\x00" in raw:
        raise FormatError(f"{path}: not a text STAR file (contains NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _Parser:
    """Line-based STAR parser: collects tokens per table, converts columns at the end."""

    def __init__(self, path, strict):
        self.path = path
        self.strict = strict
        self.result = StarFile(path=path)
        self.block = None  # current block name, None before the first data_
        self.block_has_table = False
        self.mode = None  # None | "list" | "header" | "rows"
        self.labels = []
        self.rows = []  # loop: stripped row lines; list: [(label, value, lineno)]
        self.linenos = []
        self.start_line = 0

    # -- errors
    def _where(self, lineno=None):
        where = f"{self.path}: table data_{self.block}"
        return where if lineno is None else f"{where}, line {lineno}"

    def _fail(self, message, lineno=None):
        if self.strict:
            raise FormatError(f"{self._where(lineno)}: {message}")
        logger.warning("%s: %s (ignored)", self._where(lineno), message)

    # -- driver
    def parse(self, text):
        lines = text.splitlines()
        for lineno, line in enumerate(lines, 1):
            s = line.strip()
            if not s:
                continue
            first = s[0]
            if first == "#":
                if self.block is None and not _VERSION_RE.match(s):
                    self.result.comments.append(line)
                continue
            if self.mode == "rows" and first not in "_dl":
                self.rows.append(s)
                self.linenos.append(lineno)
                continue
            self._line(s, first, lineno)
        self._finish_table(eof=True)
        if self.block is None:
            raise FormatError(f"{self.path}: empty or not a STAR file (no data_ block)")
        return self.result

    def _line(self, s, first, lineno):
        if s.startswith("data_"):
            self._finish_table()
            self._finish_block()
            self.block = s[5:].split()[0] if s[5:].strip() else ""
            self.block_has_table = False
            return
        if s.startswith("loop_") and (len(s) == 5 or s[5] in " \t"):
            self._need_block(lineno, "loop_")
            self._finish_table()
            self._start("header", lineno)
            return
        if first == "_":
            self._need_block(lineno, "label " + s.split()[0])
            self._label_line(s, lineno)
            return
        if self.mode in ("header", "rows"):
            self.mode = "rows"
            self.rows.append(s)
            self.linenos.append(lineno)
            return
        if self.block is None:
            self._need_block(lineno, f"value {s.split()[0]!r}")
        elif s in ("global_", "stop_") or s.startswith("save_"):
            return
        else:
            self._fail(f"value {s.split()[0]!r} outside a loop and not after a label", lineno)

    def _need_block(self, lineno, what):
        if self.block is None:
            raise FormatError(f"{self.path}, line {lineno}: {what} outside any data_ block")

    def _start(self, mode, lineno):
        self.mode = mode
        self.labels = []
        self.rows = []
        self.linenos = []
        self.start_line = lineno

    def _label_line(self, s, lineno):
        label = s.split(None, 1)[0][1:]
        if not label:
            self._fail("empty label '_'", lineno)
            return
        if self.mode == "header":
            self.labels.append(label)
            self.linenos.append(lineno)
            return
        if self.mode == "rows":
            self._finish_table()
        if self.mode != "list":
            self._start("list", lineno)
        tokens = _tokenize(s[len(label) + 1:])
        if tokens is None:
            self._fail(f"unterminated quote in the value of {label}", lineno)
            return
        if len(tokens) != 1:
            what = "no value" if not tokens else f"{len(tokens)} values"
            self._fail(f"label {label} has {what}; expected one value", lineno)
            if not tokens:
                return
        self.rows.append((label, tokens[0], lineno))

    # -- table completion
    def _finish_block(self):
        if self.block is not None and not self.block_has_table:
            # an empty data_ block: keep it as an empty list table
            self.result.add(StarTable(self.block, pd.DataFrame(), loop=False))

    def _finish_table(self, eof=False):
        mode = self.mode
        self.mode = None
        if mode == "list":
            self._finish_list()
        elif mode in ("header", "rows"):
            self._finish_loop(eof)
        elif eof:
            self._finish_block()

    def _finish_list(self):
        labels, values, linenos = [], [], []
        for label, value, lineno in self.rows:
            if label in labels:
                self._fail(f"label {label} appears twice", lineno)
                i = labels.index(label)
                values[i], linenos[i] = value, lineno
                continue
            labels.append(label)
            values.append(value)
            linenos.append(lineno)
        columns = [[v] for v in values]
        df = self._frame(labels, columns, [[n] for n in linenos])
        self.result.add(StarTable(self.block, df, loop=False))
        self.block_has_table = True

    def _finish_loop(self, eof):
        labels = self.labels
        if not labels:
            self._fail("loop_ without labels", self.start_line)
            return
        # a loop with labels and no rows is an empty table, also at the end of the file: RELION
        # writes one for an empty selection (relion_star_handler, an empty class) and reads it back
        self._check_duplicate_labels(labels)
        token_rows, linenos = self._tokenize_rows(len(labels))
        columns = list(zip(*token_rows)) if token_rows else [() for _ in labels]
        line_cols = [linenos] * len(labels)
        df = self._frame(labels, columns, line_cols)
        self.result.add(StarTable(self.block, df, loop=True))
        self.block_has_table = True

    def _check_duplicate_labels(self, labels):
        seen = set()
        for i, label in enumerate(labels):
            if label in seen:
                self._fail(f"label {label} appears twice in the loop header", self.linenos[i])
                labels[i] = f"{label}#{i + 1}"
            seen.add(label)

    def _tokenize_rows(self, ncols):
        rows = self.rows
        linenos = self.linenos[-len(rows):] if rows else []
        token_rows = [_tokenize(r) if ('"' in r or "'" in r or "#" in r) else r.split()
                      for r in rows]
        if all(t is not None and len(t) == ncols for t in token_rows):
            return token_rows, linenos
        good_rows, good_lines = [], []
        for tokens, lineno in zip(token_rows, linenos):
            if tokens is None:
                self._fail("unterminated quote", lineno)
            elif len(tokens) != ncols:
                self._fail(f"expected {ncols} values (one per label), found {len(tokens)}", lineno)
            else:
                good_rows.append(tokens)
                good_lines.append(lineno)
        return good_rows, good_lines

    def _frame(self, labels, columns, line_cols):
        data = {}
        for label, col, lines in zip(labels, columns, line_cols):
            arr = self._convert(label, col, lines)
            data[label] = pd.Series(arr, dtype=object) if arr.dtype == object else arr
        return pd.DataFrame(data, index=pd.RangeIndex(len(columns[0]) if columns else 0))

    def _convert(self, label, values, linenos):
        kind = _labels.label_type(label)
        if kind is None:
            return _infer_column(values)
        if kind in (_labels.STR, _labels.INT_VECTOR, _labels.FLOAT_VECTOR):
            return _object_array(values)
        converter = {_labels.FLOAT: _to_float, _labels.INT: _to_int, _labels.BOOL: _to_bool}[kind]
        try:
            return converter(values, label)
        except ValueError:
            bad = _first_bad(values, kind)
            expected = {"float": "a number", "int": "an integer", "bool": "0 or 1"}[kind]
            lineno = linenos[bad] if bad is not None and bad < len(linenos) else None
            found = values[bad] if bad is not None else "?"
            self._fail(f"column {label}: expected {expected}, found {found!r}", lineno)
            return _object_array(values)


def _tokenize(s):
    """Split one line into values, honouring quotes and ``#`` comments.

    A quoted value starts with ``"`` or ``'`` and ends at the same quote followed by
    whitespace or the end of the line (STAR/CIF rule), unless RELION escaped that quote
    with a preceding ``\\a`` (BEL), which is removed.  Returns None for an unterminated
    quote.
    """
    out = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in " \t":
            i += 1
            continue
        if c == "#":
            break
        if c in "\"'":
            j = i + 1
            while True:
                k = s.find(c, j)
                if k < 0:
                    return None
                if (k + 1 == n or s[k + 1] in " \t") and s[k - 1] != "\a":
                    break
                j = k + 1
            out.append(s[i + 1:k].replace("\a", ""))
            i = k + 1
            continue
        j = i
        while j < n and s[j] not in " \t":
            j += 1
        out.append(s[i:j])
        i = j
    return out


def _object_array(values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


def _to_float(values, label):
    return np.array(values, dtype=np.float64)


def _to_int(values, label):
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        floats = np.array(values, dtype=np.float64)
    if np.all(np.isfinite(floats)) and np.all(floats == np.round(floats)):
        return floats.astype(np.int64)
    logger.warning("integer label %s holds non-integer values; kept as floats", label)
    return floats


def _to_bool(values, label):
    try:
        return np.array(values, dtype=np.int64)
    except ValueError:
        return np.array([_BOOL_WORDS[v.lower()] if v.lower() in _BOOL_WORDS else int(v)
                         for v in values], dtype=np.int64)


def _first_bad(values, kind):
    for i, v in enumerate(values):
        try:
            if kind == _labels.FLOAT:
                float(v)
            elif kind == _labels.BOOL and v.lower() in _BOOL_WORDS:
                continue
            else:
                float(v)
        except ValueError:
            return i
    return None


def _infer_column(values):
    """Type an unknown label's column: int64, else float64, else str objects."""
    # Python's int()/float() accept digit separators ('1_0' == 10): such values stay text
    if values and "_" not in "".join(values):
        for dtype in (np.int64, np.float64):
            try:
                return np.array(values, dtype=dtype)
            except (ValueError, OverflowError):
                pass
    return _object_array(values)


# --------------------------------------------------------------------------------------
# writing


def write_star(path, tables, *, comments=(), version=RELION_VERSION):
    """Write tables in RELION 5's STAR layout, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file; parent directories are created.
    tables : StarFile, dict, StarTable or iterable of StarTable
        Tables in output order.  Dict values may be StarTables (their ``.name`` is used),
        DataFrames (loop tables named by the key) or dicts (list tables named by the key).
    comments : sequence of str
        Comment lines written before the first table (``#`` is added when missing).  When
        empty and ``tables`` is a :class:`StarFile`, its ``comments`` are written.
    version : int or None
        Number written in the ``# version`` line of every table; None omits the line.
    """
    text = format_star(tables, comments=comments, version=version)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="\n", encoding="utf-8") as fh:
            fh.write(text)


def format_star(tables, *, comments=(), version=RELION_VERSION):
    """Return the text :func:`write_star` would write."""
    table_list = _as_table_list(tables)
    if not comments and isinstance(tables, StarFile):
        comments = tables.comments
    parts = [(c if c.lstrip().startswith("#") else "# " + c) + "\n" for c in comments]
    for table in table_list:
        parts.append(_format_table(table, version))
    return "".join(parts)


def _as_table_list(tables):
    if isinstance(tables, StarTable):
        return [tables]
    if isinstance(tables, dict):
        out = []
        for key, value in tables.items():
            if isinstance(value, StarTable):
                out.append(value)
            elif isinstance(value, pd.DataFrame):
                out.append(loop_table(key, value))
            elif isinstance(value, dict):
                out.append(list_table(key, value))
            else:
                raise TypeError(f"cannot write {type(value).__name__} as STAR table {key!r}")
        return out
    return list(tables)


def _format_table(table, version):
    df = table.df
    if df.shape[1] == 0 or len(df) == 0:
        logger.debug("table data_%s is empty; not written (as RELION)", table.name)
        return ""
    head = f"\n# version {version}\n" if version else ""
    head += f"\ndata_{table.name}\n\n"
    columns = [_format_column(str(label), df[label]) for label in df.columns]
    if not table.loop:
        if len(df) != 1:
            raise InputError(f"list table data_{table.name} has {len(df)} rows; expected 1")
        return head + _format_list(list(map(str, df.columns)), [c[0] for c in columns]) + " \n"
    lines = ["loop_ \n"]
    lines += [f"_{label} #{i} \n" for i, label in enumerate(df.columns, 1)]
    padded = [[v.rjust(10) for v in col] for col in columns]
    lines += [" ".join(row) + " \n" for row in zip(*padded)]
    lines.append(" \n")
    return head + "".join(lines)


def _format_list(labels, values):
    width = max([10] + [len(lab) for lab in labels])
    return "".join(
        f"_{lab}{' ' * (12 + width - len(lab))}{val}\n" for lab, val in zip(labels, values)
    )


def _format_column(label, series):
    """Return the escaped text of every value of one column."""
    kind = _labels.label_type(label)
    values = series.to_numpy()
    kind_char = values.dtype.kind
    if kind in _labels.VECTOR_TYPES:
        return [_escape(format_vector(v)) if not _is_missing(v) else '""' for v in values]
    if kind == _labels.STR:
        return [_escape(_text(v)) for v in values]
    if kind_char in "iub":
        if kind == _labels.FLOAT:
            return _format_floats(values)
        return _format_ints(values)
    if kind_char == "f":
        if kind in (_labels.INT, _labels.BOOL) and _all_integral(values):
            return _format_ints(values.astype(np.int64))
        return _format_floats(values)
    return [_format_scalar(v, kind) for v in values]


def _all_integral(values):
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def _format_ints(values):
    return [f"{v:12d}" for v in np.asarray(values).astype(np.int64).tolist()]


_FLOAT_FORMATS = (
    (False, False, "{:12.6f}"),
    (False, True, "{:12.5f}"),
    (True, False, "{:12.6e}"),
    (True, True, "{:12.5e}"),
)


def _format_floats(values):
    """Format floats as RELION does, falling back to exact e-format where 1e-6 would be lost."""
    v = np.asarray(values, dtype=np.float64)
    a = np.abs(v)
    with np.errstate(invalid="ignore"):
        sci = ((a > 0) & (a < 0.001)) | (a > 100000.0)
        neg = v < 0
    out = np.empty(v.shape, dtype=object)
    for want_sci, want_neg, fmt in _FLOAT_FORMATS:
        idx = np.flatnonzero((sci == want_sci) & (neg == want_neg))
        if idx.size:
            out[idx] = [fmt.format(x) for x in v[idx].tolist()]
    back = np.array(out.tolist(), dtype=np.float64) if v.size else v
    with np.errstate(invalid="ignore"):
        ok = (back == v) | (np.abs(back - v) <= _REL_TOL * a) | (np.isnan(back) & np.isnan(v))
    for i in np.flatnonzero(~ok):
        out[i] = _precise_float(v[i])
    return out.tolist()


def _precise_float(x):
    """Shortest ``%.Ne`` text (N >= 6) that reads back as exactly ``x``."""
    shortest = repr(float(x))  # shortest text that round-trips, e.g. '0.0123456789'
    mantissa = shortest.lstrip("-").split("e")[0].replace(".", "").strip("0")
    text = f"{x:12.{max(6, len(mantissa) - 1)}e}"
    return text if float(text) == x else shortest


def _format_scalar(v, kind):
    if _is_missing(v):
        return '""'
    if isinstance(v, (bool, np.bool_)):
        return f"{int(v):12d}"
    if isinstance(v, (int, np.integer)):
        return _format_floats([v])[0] if kind == _labels.FLOAT else f"{int(v):12d}"
    if isinstance(v, (float, np.floating)):
        if kind in (_labels.INT, _labels.BOOL) and float(v).is_integer():
            return f"{int(v):12d}"
        return _format_floats([v])[0]
    if isinstance(v, (list, tuple, np.ndarray)):
        return _escape(format_vector(v))
    return _escape(str(v))


def _is_missing(v):
    if v is None or v is pd.NA:
        return True
    return isinstance(v, float) and v != v


def _text(v):
    if v is None or v is pd.NA:
        return ""
    if isinstance(v, float) and v != v:
        return ""
    return str(v)


def _escape(s):
    """Quote a string value when RELION would (empty, leading quote, whitespace) or when it
    would otherwise be read back as something else (leading ``#``/``_``, ``data_``, ``loop_``)."""
    if s == "":
        return '""'
    if s[0] in "\"'#_" or " " in s or "\t" in s or s.startswith(("data_", "loop_")):
        if '"' in s:  # RELION's escape: BEL before a quote that would end the value
            s = re.sub(r'"(?=[ \t]|\Z)', '\a"', s)
        return '"' + s + '"'
    return s


def _to_python(value):
    if isinstance(value, np.generic):
        return value.item()
    return value
