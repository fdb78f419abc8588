"""GPU device assignment from RELION's ``--gpu`` string (no CUDA needed to compute it).

RELION's syntax: ranks are separated by ``:`` and the threads of one rank by ``,``; e.g.
``--gpu "0:1"`` gives follower 1 device 0 and follower 2 device 1, ``"0,1:2,3"`` two devices
per follower.  sta gives one device to each follower and maps the followers of a node
round-robin onto the listed rank entries by their local rank (first device of the entry);
an empty string (``--gpu ""``) or a bare ``--gpu`` uses every visible device round-robin.
Several followers may share one device.
"""

from sta.errors import InputError


def parse_gpu_ids(text):
    """``"0,1:2"`` -> ``[[0, 1], [2]]``; ``""`` or no digits -> ``[]`` (all visible devices)."""
    text = (text or "").strip().strip("'\"")
    if not any(ch.isdigit() for ch in text):
        return []
    out = []
    for rank_part in text.split(":"):
        ids = []
        for tok in rank_part.split(","):
            tok = tok.strip()
            if not tok:
                continue
            if not tok.isdigit():
                raise InputError(f"--gpu {text!r}: '{tok}' is not a device number (expected e.g. \"0:1\" or \"0,1:2,3\")")
            ids.append(int(tok))
        if not ids:
            raise InputError(f"--gpu {text!r}: empty device list for a rank (expected e.g. \"0:1\")")
        out.append(ids)
    return out


def assign_device(text, local_rank, n_visible):
    """Device number for the follower with node-local index ``local_rank`` (0-based)."""
    if n_visible < 1:
        raise InputError("--gpu was given but no CUDA device is visible")
    ids = parse_gpu_ids(text)
    if not ids:
        return local_rank % n_visible
    dev = ids[local_rank % len(ids)][0]
    if dev >= n_visible:
        raise InputError(f"--gpu {text!r}: device {dev} does not exist ({n_visible} visible: 0-{n_visible - 1})")
    return dev
