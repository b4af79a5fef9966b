"""Helpers shared by the repair tests (a plain module: test folders have no __init__.py)."""
from __future__ import annotations

import numpy as np

from netdiff.bits.codec import encode
from netdiff.bits.layout import NETDIFFUSION
from netdiff.image.codec import pad_rows
from netdiff.io.pcap import read_capture


def image_bits(path, layout=NETDIFFUSION, rows=None) -> np.ndarray:
    batch, _ = read_capture(path)
    bits, _ = encode(batch, layout)
    height = rows or layout.height
    return pad_rows(bits[:height], height)


def fields_of(batch, layout=NETDIFFUSION) -> tuple[np.ndarray, dict]:
    """(bits, {field: int values}) of a repaired batch re-encoded with the layout."""
    from netdiff.rules.fields import to_int

    bits, parsed = encode(batch, layout)
    assert (parsed.reason == 0).all(), "every repaired packet must be readable by nPrint"
    vals = {name: to_int(bits[:, sl]) for name, sl in layout.fields.items() if sl.stop - sl.start <= 63}
    return bits, vals
