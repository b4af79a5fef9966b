import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L
from netdiff.errors import NetdiffError
from netdiff.packet_repair import check_rows, repair
from netdiff.packet_repair.perturb import flip_pixels
from repair_helpers import fields_of


def test_strict_accepts_a_converted_capture(sample_images):
    for bits in sample_images.values():
        assert check_rows(bits, L) == {}
        res = repair(bits, L, strict=True)
        assert res.report["packets"] == int(np.any(bits != -1, axis=1).sum())


def test_strict_refuses_and_says_what_is_wrong(mixed_image):
    bits = mixed_image.copy()
    sl = L.fields["ipv4_ttl"]
    bits[7, sl] = 0                                   # TTL 0 in image row 7
    with pytest.raises(NetdiffError) as e:
        repair(bits, L, strict=True)
    msg = str(e.value)
    assert "strict: 1 of" in msg and "ipv4_ttl not a legal value in 1 rows (first: image row 7)" in msg
    assert "\n" not in msg


def test_strict_lists_every_kind_of_problem(mixed_image):
    with pytest.raises(NetdiffError) as e:
        repair(flip_pixels(mixed_image, 0.05, 0), L, strict=True)
    msg = str(e.value)
    for problem in ("header sections partly blank", "disagrees with the options", "not a legal value"):
        assert problem in msg
    # without --strict the same image is repaired
    fields_of(repair(flip_pixels(mixed_image, 0.05, 0), L).batch)
