"""Exception types shared by every layer.

Every error a user can cause (bad file, missing column, wrong value) is raised as a
:class:`StaError` subclass whose message is one line naming the file, table, column or
value and what was expected.  Command entry points turn them into that one line on
stderr and a non-zero exit code; a traceback is only shown with ``--verbose``.
"""


class StaError(Exception):
    """Base class of all user-facing errors."""


class InputError(StaError):
    """Bad or inconsistent input: files, tables, columns, values, arguments."""


class FormatError(InputError):
    """A file that cannot be parsed (truncated STAR, corrupt MRC, ...)."""


class AbortRequested(StaError):
    """The pipeline asked the job to stop (``RELION_JOB_ABORT_NOW``)."""
