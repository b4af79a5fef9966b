"""One test per rule: a wrong value in a clean image is repaired to a legal one, and the
repaired capture passes netdiff's rule checks."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L
from netdiff.errors import NetdiffError
from netdiff.packet_repair import repair
from netdiff.rules import engine as E
from netdiff.rules.fields import to_bits
from netdiff.validation.rule_checks import check_batch

from repair_helpers import fields_of

RULES = E.load_rules()


def _rows_with(bits, field):
    return np.flatnonzero(np.all(bits[:, L.fields[field]] != -1, axis=1))


def _set(bits, rows, field, value):
    sl = L.fields[field]
    bits[np.ix_(rows, np.arange(sl.start, sl.stop))] = to_bits(np.full(len(rows), value), sl.stop - sl.start)


def _illegal(fr: E.FieldRule) -> int | None:
    if fr.values is not None:
        return next(v for v in range(1 << fr.bits) if v not in fr.values)
    lo, hi = fr.range
    if lo > 0:
        return lo - 1
    if hi < (1 << fr.bits) - 1:
        return hi + 1
    return None


def _valued_fields():
    out = []
    for proto, pr in sorted(RULES.items()):
        for fr in pr.fields:
            if (fr.values is not None or fr.range is not None) and fr.bits <= 63 and \
                    pr.column(fr.name) in L.fields and _illegal(fr) is not None and fr.compute is None:
                out.append(pytest.param(proto, fr.name, id=pr.column(fr.name)))
    return out


def _repaired_ok(bits):
    res = repair(bits, L, seed=1)
    fails, checked = check_batch(res.batch)
    assert checked.all()
    assert not fails, {k: int(v.sum()) for k, v in fails.items()}
    return res


@pytest.mark.parametrize("proto,name", _valued_fields())
def test_each_declared_value_rule_is_repaired(mixed_image, proto, name):
    pr = RULES[proto]
    fr = pr.field(name)
    col = pr.column(name)
    bits = mixed_image.copy()
    rows = _rows_with(bits, col)
    if not len(rows):   # IPv6 rows: turn TCP rows into IPv6 ones first
        rows = _rows_with(bits, "tcp_sprt")[:50]
        sec = L.fields
        bits[np.ix_(rows, np.arange(sec["ipv4_ver"].start, sec["ipv4_opt"].stop))] = -1
        _set(bits, rows, "ipv6_ver", 6)
        for f, v in (("ipv6_tc", 0), ("ipv6_fl", 0), ("ipv6_len", 40), ("ipv6_nh", 6), ("ipv6_hl", 64)):
            _set(bits, rows, f, v)
    bad = _illegal(fr)
    _set(bits, rows, col, bad)
    res = _repaired_ok(bits)
    _, vals = fields_of(res.batch)
    present = np.all(fields_of(res.batch)[0][:, L.fields[col]] != -1, axis=1)
    assert present.any()
    assert fr.legal(vals[col][present]).all()
    assert res.report["row_problems_repaired"].get(f"{col} not a legal value", 0) >= len(rows) or not fr.check


def test_illegal_flag_combinations_are_repaired(mixed_image):
    bits = mixed_image.copy()
    rows = _rows_with(bits, "tcp_syn")
    for f in ("tcp_syn", "tcp_fin", "tcp_rst"):
        _set(bits, rows[::2], f, 1)
    _set(bits, rows[1::2], "tcp_ackf", 0)
    res = _repaired_ok(bits)
    _, v = fields_of(res.batch)
    tcp = v["ipv4_proto"] == 6
    flags = np.stack([v[f"tcp_{k}"][tcp] for k in ("syn", "ackf", "fin", "rst", "psh")], axis=1)
    assert E.flags_legal(RULES["tcp"], flags).all()
    assert res.report["row_problems_repaired"]["tcp flags not a legal combination"] >= len(rows[::2])


@pytest.mark.parametrize("field,value", [("ipv4_hl", 15), ("tcp_doff", 15), ("ipv4_hl", 2), ("tcp_doff", 0)])
def test_header_length_follows_the_options(mixed_image, field, value):
    bits = mixed_image.copy()
    rows = _rows_with(bits, "tcp_sprt")
    orig = fields_of(repair(bits, L, seed=1).batch)[1][field]
    _set(bits, rows, field, value)
    res = _repaired_ok(bits)
    got = fields_of(res.batch)[1][field]
    np.testing.assert_array_equal(got, orig)     # the options the rows hold decide, not the field


@pytest.mark.parametrize("field,value", [("ipv4_tl", 3), ("ipv4_tl", 65535), ("udp_len", 0),
                                         ("udp_len", 9000)])
def test_lengths_add_up(mixed_image, field, value):
    bits = mixed_image.copy()
    rows = _rows_with(bits, field)
    _set(bits, rows, field, value)
    res = _repaired_ok(bits)
    b = res.batch
    _, v = fields_of(b)
    np.testing.assert_array_equal(v["ipv4_tl"] + 14, b.caplen)        # IP length = frame - Ethernet
    assert (v["ipv4_tl"] <= 1500).all()
    udp = v["ipv4_proto"] == 17
    np.testing.assert_array_equal(v["udp_len"][udp], v["ipv4_tl"][udp] - 4 * v["ipv4_hl"][udp])


def test_udp_length_stands_in_for_an_ip_length_that_leaves_no_payload(mixed_image):
    """UDP rows whose IP length covers only the headers but whose UDP length says 8 + 40 carry
    40 bytes; with both lengths saying no payload they carry none."""
    bits = mixed_image.copy()
    rows = _rows_with(bits, "udp_len")
    assert len(rows) > 10
    half = rows[: len(rows) // 2]
    _set(bits, rows, "ipv4_tl", 28)
    _set(bits, rows, "ipv4_hl", 5)
    _set(bits, half, "udp_len", 48)
    _set(bits, rows[len(rows) // 2:], "udp_len", 8)
    res = _repaired_ok(bits)
    _, v = fields_of(res.batch)
    kept = np.asarray(res.rows)
    udp = v["ipv4_proto"] == 17
    from_half = np.isin(kept, half) & udp
    rest = np.isin(kept, rows[len(rows) // 2:]) & udp
    assert from_half.any() and rest.any()
    assert (v["udp_len"][from_half] >= 48).all()        # a payload template may grow it, never drop it
    assert (v["udp_len"][rest] - 8 < 48).all()


def test_protocol_number_follows_the_filled_sections(mixed_image):
    bits = mixed_image.copy()
    rows = _rows_with(bits, "tcp_sprt")
    _set(bits, rows, "ipv4_proto", 17)
    res = _repaired_ok(bits)
    _, v = fields_of(res.batch)
    assert (v["ipv4_proto"][: len(rows)] == 6).all()


def test_two_protocols_in_one_row(mixed_image):
    bits = mixed_image.copy()
    rows = _rows_with(bits, "tcp_sprt")
    u = L.fields["udp_sport"].start
    bits[rows, u:u + 40] = 0          # UDP section partly filled on TCP rows: TCP wins
    res = _repaired_ok(bits)
    out, v = fields_of(res.batch)
    assert (v["ipv4_proto"][: len(rows)] == 6).all()
    assert (out[: len(rows), u:u + 64] == -1).all()
    assert res.report["row_problems_repaired"]["two protocols in one row"] >= len(rows)


def _opt_rows(bits, nbytes, data_rows=True):
    """TCP rows (with or without SYN) whose option area we overwrite with ``nbytes`` bytes."""
    rows = _rows_with(bits, "tcp_sprt")
    syn = bits[rows, L.fields["tcp_syn"].start] == 1
    return rows[~syn if data_rows else syn]


def _write_opts(bits, rows, opt: bytes):
    sl = L.fields["tcp_opt"]
    b = np.unpackbits(np.frombuffer(opt, np.uint8)).astype(np.int8)
    bits[rows, sl.start:sl.stop] = -1
    bits[rows, sl.start:sl.start + len(b)] = b
    _set(bits, rows, "tcp_doff", 5 + len(opt) // 4)


def _options_of(batch, i):
    raw = batch.packet(i)
    ihl = (raw[14] & 15) * 4
    t = 14 + ihl
    doff = (raw[t + 12] >> 4) * 4
    return raw[t + 20:t + doff], raw[t + 13]


@pytest.mark.parametrize("opt,desc", [
    (b"\x02\x04\x05\xb4", "MSS outside SYN"),
    (b"\x03\x03\x0e\x01", "window scale outside SYN"),
    (b"\x04\x02\x01\x01", "SACK-permitted outside SYN"),
    (b"\x4f\x07\x01\x02\x03\x04\x05\x01", "unknown kind"),
    (b"\x05\x0b" + bytes(10), "SACK block length 11"),
    (b"\x08\x0c" + bytes(8) + b"\x01\x01", "timestamps length 12"),
    (b"\x02\x09\x05\xb4", "MSS length 9"),
])
def test_option_grammar_on_data_segments(mixed_image, opt, desc):
    bits = mixed_image.copy()
    rows = _opt_rows(bits, len(opt))
    _write_opts(bits, rows, opt)
    res = _repaired_ok(bits)
    for i in range(min(len(rows), 20)):
        o, flags = _options_of(res.batch, int(rows[i]))    # mixed_image has no blank rows
        assert len(o) == len(opt)
        if not flags & 0x02:        # not a SYN: no SYN-only option survives
            assert o[:1] not in (b"\x02", b"\x03", b"\x04")


def test_window_scale_and_mss_ranges_on_syn(mixed_image):
    bits = mixed_image.copy()
    rows = _opt_rows(bits, 8, data_rows=False)
    assert len(rows)
    _write_opts(bits, rows, b"\x02\x04\x00\x10\x03\x03\x0f\x00")   # MSS 16, shift 15, EOL
    res = _repaired_ok(bits)
    syn_rows = [i for i in range(len(res.batch)) if _options_of(res.batch, i)[1] & 0x02
                and len(_options_of(res.batch, i)[0]) == 8]
    assert syn_rows
    for i in syn_rows:
        o, _ = _options_of(res.batch, i)
        if o[0] == 2:
            assert int.from_bytes(o[2:4], "big") >= 88
        if o[4] == 3:
            assert o[6] <= 14


def test_icmp_type_code_and_rest_of_header(mixed_image):
    bits = mixed_image.copy()
    rows = _rows_with(bits, "icmp_type")
    _set(bits, rows[::3], "icmp_type", 42)
    _set(bits, rows[1::3], "icmp_code", 9)
    _set(bits, rows[2::3], "icmp_type", 11)            # time exceeded: rest is unused
    _set(bits, rows[2::3], "icmp_code", 0)
    res = _repaired_ok(bits)
    _, v = fields_of(res.batch)
    icmp = v["ipv4_proto"] == 1
    pairs = RULES["icmp"].icmp_pairs()
    tc = v["icmp_type"][icmp] * 256 + v["icmp_code"][icmp]
    assert np.isin(tc, pairs[:, 0] * 256 + pairs[:, 1]).all()
    te = icmp & (v["icmp_type"] == 11)
    assert te.any() and (v["icmp_roh"][te] == 0).all()
    # an error quotes an IPv4 header + 8 bytes
    assert (res.batch.caplen[te] == 14 + 20 + 8 + 28).all()


def test_checksums_are_recomputed(mixed_image):
    bits = mixed_image.copy()
    for f in ("ipv4_cksum", "tcp_cksum", "udp_cksum", "icmp_cksum"):
        _set(bits, _rows_with(bits, f), f, 0x1234)
    _repaired_ok(bits)          # check_batch verifies IPv4, TCP, UDP and ICMP checksums


def test_rules_are_data_not_code(mixed_image, tmp_path, monkeypatch):
    """Changing a rule file changes repair without touching code."""
    for p in E.rules_dir().glob("*.yaml"):
        shutil.copy(p, tmp_path / p.name)
    text = (tmp_path / "ipv4.yaml").read_text()
    text = text.replace("{name: ttl, bits: 8, range: [1, 255]", "{name: ttl, bits: 8, range: [100, 120]")
    (tmp_path / "ipv4.yaml").write_text(text)
    monkeypatch.setenv(E.RULES_ENV, str(tmp_path))
    res = repair(mixed_image, L, seed=1)
    _, v = fields_of(res.batch)
    assert ((v["ipv4_ttl"] >= 100) & (v["ipv4_ttl"] <= 120)).all()


def test_broken_rule_file_is_a_one_line_error(tmp_path):
    for p in E.rules_dir().glob("*.yaml"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "udp.yaml").write_text((tmp_path / "udp.yaml").read_text().replace(
        "{name: len, bits: 16", "{name: len, bits: 12"))
    with pytest.raises(NetdiffError, match="udp.yaml.*do not match the nPrint section udp"):
        E.load_rules(tmp_path)


@pytest.mark.parametrize("edit, message", [
    ("{name: dfbit, bits: 1, per: direction, hold: first", "field dfbit: hold must be one of median, first"),
    ("{name: dfbit, bits: 1, per: flow, hold: median", "field dfbit: per must be direction, not 'flow'"),
    ("{name: dfbit, bits: 1, hold: median", "field dfbit: hold must be one of median, first, with per: direction"),
])
def test_held_field_rules_are_checked(tmp_path, edit, message):
    for p in E.rules_dir().glob("*.yaml"):
        shutil.copy(p, tmp_path / p.name)
    text = (tmp_path / "ipv4.yaml").read_text()
    assert "{name: dfbit, bits: 1, per: direction, hold: first" in text
    bad = edit.replace("hold: first", "hold: middle")
    (tmp_path / "ipv4.yaml").write_text(text.replace("{name: dfbit, bits: 1, per: direction, hold: first", bad))
    with pytest.raises(NetdiffError, match="ipv4.yaml.*" + message):
        E.load_rules(tmp_path)


def test_mtu_holds_when_a_row_changes_ip_version(mixed_image):
    """A full-size IPv4 row in a flow that is mostly IPv6 becomes IPv6 (20 bytes more header):
    its payload shrinks so the packet still fits the MTU."""
    bits = mixed_image.copy()
    rows = _rows_with(bits, "tcp_sprt")[:60]
    data = rows[bits[rows, L.fields["tcp_syn"].start] == 0]
    big = data[:1]                                   # a data segment (SYNs carry no payload)
    v6rows = np.setdiff1d(rows, big)
    sec = L.fields
    bits[np.ix_(v6rows, np.arange(sec["ipv4_ver"].start, sec["ipv4_opt"].stop))] = -1
    for f, v in (("ipv6_ver", 6), ("ipv6_tc", 0), ("ipv6_fl", 0), ("ipv6_len", 40), ("ipv6_nh", 6),
                 ("ipv6_hl", 64)):
        _set(bits, v6rows, f, v)
    _set(bits, big, "ipv4_tl", 1500)
    res = _repaired_ok(bits)
    assert res.batch.caplen.max() <= 14 + 1500
    assert res.report["rows_changed"]["ip_version"] >= 1
