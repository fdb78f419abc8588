"""RELION image names: ``[N@]path[:type]`` (one parser for every reader of images and maps).

RELION refers to an image as ``path``, to image ``N`` (1-based) of a stack as ``N@path``, and
lets a type suffix override the file extension: ``stack.mrc:mrcs`` is ``stack.mrc`` read as
a stack of 2D images, ``TS_01.st:mrc`` an IMOD stack read as MRC.  Scipion writes every
tilt image this way (``1@Runs/000002_ProtImportTs/extra/TS_01.mrc:mrcs``).  As in RELION's
``FileName::getFileFormat``/``removeFileFormat``, the type is the text after the last
``:`` (case-insensitive); it counts as a type suffix only when it is a plain word, so a
``:`` inside a directory name stays part of the path.

sta reads MRC files (any extension: ``.mrc``, ``.mrcs``, ``.st``, ``.ali``, ...) and takes
image ``N`` of any MRC file as its section ``N``, so ``:mrcs`` (read as a stack, as in
RELION) and ``:mrc`` are both accepted.  A type RELION reads with another reader
(SPIDER, TIFF, IMAGIC, DM, EER) is refused with one line saying so, and an unknown type
with one line listing RELION's types.
"""

import re
from dataclasses import dataclass

from sta.errors import InputError

#: type suffixes read as MRC (``mrcs``: a stack of 2D images; ``mrc``: a map or image)
MRC_TYPES = ("mrc", "mrcs")

#: types RELION reads with readers sta does not have -> the format's name
OTHER_RELION_TYPES = {"spi": "SPIDER", "xmp": "SPIDER", "stk": "SPIDER", "vol": "SPIDER",
                      "tif": "TIFF", "tiff": "TIFF", "img": "IMAGIC", "hed": "IMAGIC",
                      "dm": "Digital Micrograph", "dm3": "Digital Micrograph",
                      "dm4": "Digital Micrograph", "eer": "EER"}

_SUFFIX = re.compile(r":([A-Za-z][A-Za-z0-9]*)$")


@dataclass(frozen=True)
class ImageName:
    """One parsed RELION image name.

    Attributes
    ----------
    path : str
        The file, as written (relative to the project directory or absolute).
    section : int or None
        1-based image number of ``N@``; None for the whole file.
    type : str or None
        Lower-case type suffix (``"mrcs"``, ``"mrc"``); None without one.
    """

    path: str
    section: int | None = None
    type: str | None = None


def parse_image_name(name, where=None):
    """Parse ``[N@]path[:type]`` into an :class:`ImageName`.

    Parameters
    ----------
    name : str
        The name as written in a STAR file or on the command line.
    where : str, optional
        Context for error messages (file, table, row, column).

    Raises
    ------
    InputError
        Section 0 or negative, an empty path, or a type sta cannot read (one line naming
        the name and, when given, ``where``).
    """
    text = str(name).strip()
    context = f"{where}: " if where else ""
    section = None
    head, sep, tail = text.partition("@")
    if sep and head.strip().lstrip("+-").isdigit():
        section = int(head)
        if section < 1:
            raise InputError(f"{context}image name {text!r}: image number {section} "
                             "(expected 1 or more before '@')")
        text = tail
    ftype = None
    match = _SUFFIX.search(text)
    if match:
        ftype = match.group(1).lower()
        text = text[:match.start()]
        if ftype in OTHER_RELION_TYPES:
            raise InputError(f"{context}image name {name!r}: type ':{ftype}' "
                             f"({OTHER_RELION_TYPES[ftype]}) is not read by sta; convert the file "
                             "to MRC (types read: :mrc, :mrcs)")
        if ftype not in MRC_TYPES:
            known = ", ".join(f":{t}" for t in MRC_TYPES + tuple(OTHER_RELION_TYPES))
            raise InputError(f"{context}image name {name!r}: unknown type suffix ':{ftype}' "
                             f"(RELION's types: {known})")
    if not text:
        raise InputError(f"{context}image name {name!r}: no file name")
    return ImageName(text, section, ftype)


def image_file(name, where=None):
    """The file part of ``[N@]path[:type]`` (section and type removed)."""
    return parse_image_name(name, where).path


def map_file(name, where=None):
    """The file of a map or mask reference (``path[:mrc]``): an ``N@`` section is refused."""
    parsed = parse_image_name(name, where)
    if parsed.section is not None:
        context = f"{where}: " if where else ""
        raise InputError(f"{context}{name!r}: a map is a whole file; an image number "
                         f"({parsed.section}@) is not expected here")
    return parsed.path
