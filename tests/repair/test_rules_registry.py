"""The rule files drive repair and validation: every ``compute:`` name is a registered
computation, every key is declared and read, and repair and validate take dependencies,
checksums and bindings from the same loaded files, so a rule change is one YAML edit."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from netdiff.bits.layout import NETDIFFUSION as L
from netdiff.bits.layout import named_layout
from netdiff.errors import NetdiffError
from netdiff.io.pcap import PacketBatch
from netdiff.packet_repair import FieldPriors, repair
from netdiff.packet_repair.perturb import random_bits
from netdiff.packet_repair.rows import STACKS
from netdiff.rules import checksum as C
from netdiff.rules import compute as CR
from netdiff.rules import engine as E
from netdiff.rules.fields import to_bits, to_int
from netdiff.validation.rule_checks import check_batch

from repair_helpers import fields_of

SHIPPED_DIR = Path(E.__file__).resolve().parents[1] / "protocol_rules"
SHIPPED = E.load_rules(SHIPPED_DIR)


def rules_copy(d, edits: dict[str, list[tuple[str, str]]] | None = None):
    """Folder ``d``: a copy of the shipped rule files with ``{file: [(old, new), ...]}`` edits."""
    d.mkdir(parents=True, exist_ok=True)
    for p in SHIPPED_DIR.glob("*.yaml"):
        shutil.copy(p, d / p.name)
    for name, pairs in (edits or {}).items():
        text = (d / name).read_text()
        for old, new in pairs:
            assert old in text, (name, old)
            text = text.replace(old, new)
        (d / name).write_text(text)
    return d


def load_error(d, edits) -> str:
    with pytest.raises(NetdiffError) as e:
        E.load_rules(rules_copy(d, edits))
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- the compute registry -----------------------------------------------------------------------

def test_every_compute_name_is_registered():
    names = {fr.compute for pr in SHIPPED.values() for fr in pr.fields if fr.compute}
    assert names <= {c.name for c in CR.REGISTRY.values() if not c.option}, names
    on_options = {k.compute for pr in SHIPPED.values() if pr.options for k in pr.options.kinds if k.compute}
    assert on_options == {c.name for c in CR.REGISTRY.values() if c.option}, on_options
    for c in CR.REGISTRY.values():
        assert c.phase in CR.PHASES and c.stage in CR.STAGES and c.doc
        if c.target is not None:
            assert callable(c.function()), c.target


def test_stages_run_values_then_lengths_then_checksums():
    """Along repair's stages the phase never goes back (scapy's post_build order)."""
    order = [CR.PHASES.index(c.phase)
             for c in sorted(CR.REGISTRY.values(), key=lambda c: CR.STAGES.index(c.stage))]
    assert order == sorted(order)


def test_unknown_compute_name_is_a_one_line_error(tmp_path):
    msg = load_error(tmp_path, {"tcp.yaml": [("compute: sequence}", "compute: sequnce}")]})
    assert "tcp.yaml" in msg and "field seq" in msg and "unknown compute 'sequnce'" in msg


def test_a_field_that_stops_naming_a_computation_keeps_its_value(tmp_path, monkeypatch):
    """The YAML name selects the computation: without ``compute: id_per_host`` the IPv4 ID is
    the generated value, not a per-host counter."""
    bits = random_bits(L, 3)
    res = repair(bits, L, seed=3)
    raw = to_int(bits[res.rows][:, L.fields["ipv4_id"]])
    _, v = fields_of(res.batch)
    v4 = v["ipv4_ver"] == 4
    assert (v["ipv4_id"][v4] != raw[v4]).mean() > 0.5       # counted per host
    d = rules_copy(tmp_path, {"ipv4.yaml": [("compute: id_per_host, ", "")]})
    monkeypatch.setenv(E.RULES_ENV, str(d))
    res = repair(bits, L, seed=3)
    _, v = fields_of(res.batch)
    np.testing.assert_array_equal(v["ipv4_id"][v4], raw[v4])


# --- the schema: every key declared, every key read ---------------------------------------------

@pytest.mark.parametrize("file,old,new,key,where", [
    ("tcp.yaml", "{name: sprt, bits: 16, range:", "{name: sprt, bits: 16, rnage:", "rnage",
     "fields[0] (sprt)"),
    ("tcp.yaml", "dependencies:", "dependancies:", "dependancies", "the file"),
    ("udp.yaml", "  pseudo_header: true", "  pseudoheader: true", "pseudoheader", "checksum"),
    ("tcp.yaml", "{kind: 2, name: mss, length: 4,", "{kind: 2, name: mss, lenght: 4,", "lenght",
     "options.kinds[2] (mss)"),
    ("icmp.yaml", "{type: 5, codes:", "{type: 5, code:", "code", "types[3]"),
    ("ipv4.yaml", "prior: {kind: id}", "prior: {knid: id}", "knid", "fields[4] (id).prior"),
])
def test_unknown_key_is_a_one_line_error(tmp_path, file, old, new, key, where):
    msg = load_error(tmp_path, {file: [(old, new)]})
    assert msg.startswith(str(tmp_path / file)) and f"unknown key '{key}' in {where} " in msg, msg


@pytest.mark.parametrize("file,old,new,expect", [
    ("udp.yaml", "bind: {ipv4.proto: 17, ipv6.nh: 17}", "bind: {ipv4.protocol: 17, ipv6.nh: 17}",
     "'ipv4' has no field 'protocol' with compute: next_protocol"),
    ("udp.yaml", "bind: {ipv4.proto: 17, ipv6.nh: 17}", "bind: {ipv4.proto: 6, ipv6.nh: 6}",
     "already tcp's"),
    ("udp.yaml", "  covers: segment", "  covers: datagram", "covers (header or segment)"),
    ("tcp.yaml", "{field: urg, requires: ackf}", "{field: urg, requires: ack}", "'ack' is not a field"),
    # the encoder reads sections by the field table's numbers: a bind cannot move a section
    ("udp.yaml", "bind: {ipv4.proto: 17, ipv6.nh: 17}", "bind: {ipv4.proto: 99, ipv6.nh: 99}",
     "the field table reads section udp under number 17 (bits/fields.py), not 99"),
    ("ipv6.yaml", "version: 6}", "version: 5}", "reads section ipv6 under number 6"),
    ("tcp.yaml", "  reset: rst", "  reset: reset", "session: 'reset' is not a one-bit field of the file"),
    # header lengths are the field table's, never restated
    ("tcp.yaml", "ports: [sprt, dprt]", "header: {fixed_bytes: 20}\nports: [sprt, dprt]",
     "unknown key 'fixed_bytes' in header (allowed: max_total_length) (header lengths come from "
     "the field table, bits/fields.py)"),
])
def test_bad_values_are_one_line_errors(tmp_path, file, old, new, expect):
    assert expect in load_error(tmp_path, {file: [(old, new)]})


def test_no_key_of_the_shipped_files_is_unused(tmp_path, monkeypatch, sample_captures,
                                               mixed_image):
    """Every key path of every shipped file is read by repair (with and without class priors)
    or validation. A fresh copy is loaded so that only this test's reads count."""
    from netdiff.pipeline.conversions import PRIORS_FILE, pcap2img

    d = rules_copy(tmp_path / "rules")
    monkeypatch.setenv(E.RULES_ENV, str(d))
    rules = E.load_rules()
    assert all(E.unused_keys(pr) for pr in rules.values())    # nothing read yet: not vacuous
    res = repair(random_bits(L, 0), L, seed=0)
    check_batch(res.batch, rules)
    # priors keys are read by priors only: still unread here
    assert "fields[].prior.per" in E.unused_keys(rules["ipv4"])
    repair(mixed_image, L, seed=1, address_pool="10.1.0.0/16")
    lay = named_layout("netdiffusion", height=256)
    pcap2img(sample_captures, tmp_path / "img", layout=lay)
    priors = FieldPriors.load(tmp_path / "img" / PRIORS_FILE)
    for cls in ("web_tcp", "dns_udp", "icmp_echo"):
        out = repair(random_bits(lay, 1), lay, seed=1, priors=priors, klass=cls)
        check_batch(out.batch, rules)
    unused = {name: E.unused_keys(pr) for name, pr in rules.items()}
    assert not any(unused.values()), unused


# --- repair and validate read the same rules ----------------------------------------------------

def test_header_shape_is_the_field_tables():
    rules = SHIPPED
    assert dict(rules["tcp"].header) == {"fixed_bytes": 20, "length_field": "doff", "length_unit": 4,
                                         "options_field": "opt"}
    assert dict(rules["ipv4"].header) == {"fixed_bytes": 20, "length_field": "hl", "length_unit": 4,
                                          "options_field": "opt", "max_total_length": 1500}
    assert {n: rules[n].header["fixed_bytes"] for n in ("udp", "icmp", "ipv6")} == \
        {"udp": 8, "icmp": 8, "ipv6": 40}
    for pr in rules.values():          # the names it gives are the protocol's own fields
        for key in ("length_field", "options_field"):
            if key in pr.header:
                assert pr.field(pr.header[key]).bits > 0


def test_stacks_are_the_bindings():
    bound = {(l3, l4) for l3 in E.layer_protocols(SHIPPED, 3).values()
             for l4 in E.layer_protocols(SHIPPED, 4).values() if E.bound_number(SHIPPED, l3, l4)}
    assert set(STACKS) == bound


def test_removing_a_binding_removes_the_stack(tmp_path, monkeypatch):
    bits = random_bits(named_layout("nprint"), 2)
    lay = named_layout("nprint")
    assert "ipv6/udp" in repair(bits, lay, seed=2).report["stacks"]
    d = rules_copy(tmp_path, {"udp.yaml": [("{ipv4.proto: 17, ipv6.nh: 17}", "{ipv4.proto: 17}")]})
    monkeypatch.setenv(E.RULES_ENV, str(d))
    res = repair(bits, lay, seed=2)
    assert "ipv6/udp" not in res.report["stacks"] and "ipv4/udp" in res.report["stacks"]
    fails, _ = check_batch(res.batch, E.load_rules(d))
    assert not fails


def _tcp_view(batch):
    _, v = fields_of(batch)
    tcp = v["ipv4_proto"] == 6
    payload = v["ipv4_tl"] - 4 * v["ipv4_hl"] - 4 * v["tcp_doff"]
    return v, tcp, payload


def test_dependencies_are_one_source(tmp_path, monkeypatch, mixed_image):
    """The PSH entry of tcp.yaml drives repair (removed: PSH stays on segments without data)
    and validation (``check: true``: such segments are flagged) alike."""
    bits = mixed_image.copy()
    tcp_rows = np.flatnonzero(np.all(bits[:, L.fields["tcp_psh"]] != -1, axis=1))
    bits[tcp_rows, L.fields["tcp_psh"].start] = 1
    v, tcp, payload = _tcp_view(repair(bits, L, seed=4).batch)
    assert not (tcp & (v["tcp_psh"] == 1) & (payload == 0)).any()

    d = rules_copy(tmp_path / "a", {"tcp.yaml": [
        ("  - {field: psh, requires_payload: true, check: false}   # repair sets PSH only with data\n", "")]})
    monkeypatch.setenv(E.RULES_ENV, str(d))
    res = repair(bits, L, seed=4)
    v, tcp, payload = _tcp_view(res.batch)
    psh_no_data = tcp & (v["tcp_psh"] == 1) & (payload == 0)
    assert psh_no_data.any()

    checked = rules_copy(tmp_path / "b", {"tcp.yaml": [
        ("{field: psh, requires_payload: true, check: false}", "{field: psh, requires_payload: true}")]})
    fails, _ = check_batch(res.batch, E.load_rules(checked))
    np.testing.assert_array_equal(fails["tcp_psh without payload"], psh_no_data)
    assert "tcp_psh without payload" not in check_batch(res.batch, SHIPPED)[0]


def test_checksum_block_is_read_by_repair_and_validate(tmp_path, monkeypatch):
    """``pseudo_header: false`` for UDP: repair leaves the pseudo-header out and validation
    under the same rules agrees; under the shipped rules those checksums are wrong."""
    d = rules_copy(tmp_path, {"udp.yaml": [("  pseudo_header: true", "  pseudo_header: false")]})
    monkeypatch.setenv(E.RULES_ENV, str(d))
    res = repair(random_bits(L, 5), L, seed=5)
    _, v = fields_of(res.batch)
    udp = v["ipv4_proto"] == 17
    assert udp.any()
    assert not check_batch(res.batch, E.load_rules(d))[0]
    fails = check_batch(res.batch, SHIPPED)[0]
    assert set(fails) == {"udp checksum wrong"}
    assert fails["udp checksum wrong"].sum() >= 0.99 * udp.sum()    # 1/65536 may agree


# --- a rule change is one YAML edit ---------------------------------------------------------------

USER_TIMEOUT = b"\x1c\x04\x01\x2c"      # RFC 5482 user timeout: kind 28, length 4, 300 s
ONE_EDIT = {
    "ipv4.yaml": [("{name: ttl, bits: 8, range: [1, 255]", "{name: ttl, bits: 8, range: [100, 120]")],
    "tcp.yaml": [("    - {kind: 8, name: timestamps, length: 10, compute: timestamps, echo_with: ackf}",
                  "    - {kind: 8, name: timestamps, length: 10, compute: timestamps, echo_with: ackf}\n"
                  "    - {kind: 28, name: user_timeout, length: 4}")],
}


def _with(batch: PacketBatch, data: np.ndarray) -> PacketBatch:
    return PacketBatch(data, batch.offset, batch.caplen, batch.wirelen, batch.ts_sec,
                       batch.ts_nsec, batch.linktype, batch.number)


def _set_ttl(batch: PacketBatch, ttl: int) -> PacketBatch:
    """Every IPv4 packet's TTL set, its header checksum recomputed."""
    data = batch.data.copy()
    for i in range(len(batch)):
        o = int(batch.offset[i]) + 14
        if data[o] >> 4 != 4:
            continue
        hl = int(data[o] & 15) * 4
        data[o + 8] = ttl
        data[o + 10:o + 12] = 0
        hdr = data[None, o:o + hl]
        ck = int(C.checksum(C.region_sum(hdr, np.zeros(1, np.int64), np.array([hl])))[0])
        data[o + 10], data[o + 11] = ck >> 8, ck & 0xFF
    return _with(batch, data)


def _data_rows_with_option(bits, opt: bytes) -> np.ndarray:
    """TCP rows without SYN whose option area becomes ``opt`` (data offset to match)."""
    rows = np.flatnonzero(np.all(bits[:, L.fields["tcp_sprt"]] != -1, axis=1))
    rows = rows[bits[rows, L.fields["tcp_syn"].start] != 1]
    sl = L.fields["tcp_opt"]
    b = np.unpackbits(np.frombuffer(opt, np.uint8)).astype(np.int8)
    bits[rows, sl.start:sl.stop] = -1
    bits[rows, sl.start:sl.start + len(b)] = b
    doff = L.fields["tcp_doff"]
    bits[np.ix_(rows, np.arange(doff.start, doff.stop))] = to_bits(np.full(len(rows), 5 + len(opt) // 4), 4)
    return rows


def _tcp_options(batch, i) -> bytes:
    raw = batch.packet(i)
    t = 14 + (raw[14] & 15) * 4
    return bytes(raw[t + 20:t + (raw[t + 12] >> 4) * 4])


def test_session_block_places_the_control_flags(tmp_path, monkeypatch, mixed_image):
    """The trace reads where flags go from tcp.yaml's ``session:``: with CWR generated on every
    TCP row, the shipped file clears it on SYN-ACKs only (answer_clears); a copy without that
    entry keeps it there, and a copy whose established rows also carry PSH puts PSH on every
    data segment."""
    bits = mixed_image.copy()
    tcp_rows = np.all(bits[:, L.fields["tcp_sprt"]] != -1, axis=1)
    bits[tcp_rows, L.fields["tcp_cwr"].start] = 1
    bits[tcp_rows, L.fields["tcp_psh"].start] = 0

    def flags(edits, sub):
        d = rules_copy(tmp_path / sub, edits)
        monkeypatch.setenv(E.RULES_ENV, str(d))
        try:
            return fields_of(repair(bits, L, seed=1).batch)[1]
        finally:
            monkeypatch.delenv(E.RULES_ENV)

    v = flags({}, "shipped")
    tcp = v["ipv4_proto"] == 6
    synack = tcp & (v["tcp_syn"] == 1) & (v["tcp_ackf"] == 1)
    assert synack.sum() >= 5 and (v["tcp_cwr"][synack] == 0).all()
    assert (v["tcp_cwr"][tcp & ~synack] == 1).all()
    v = flags({"tcp.yaml": [("  answer_clears: [cwr]", "  answer_clears: []")]}, "keep_cwr")
    assert (v["tcp_cwr"][v["ipv4_proto"] == 6] == 1).all()
    v = flags({"tcp.yaml": [("  established: [ackf]", "  established: [ackf, psh]")]}, "psh")
    tcp = v["ipv4_proto"] == 6
    payload = v["ipv4_tl"] - 4 * v["ipv4_hl"] - 4 * v["tcp_doff"]
    data = tcp & (v["tcp_syn"] == 0) & (v["tcp_rst"] == 0) & (payload > 0)
    assert data.sum() >= 20 and (v["tcp_psh"][data] == 1).all()


def test_a_rule_change_is_one_yaml_edit(tmp_path, monkeypatch, mixed_image):
    """TTL range [100, 120] and a new TCP option kind, by editing a copy of the rule files:
    repair follows, and validation under the edited files follows; no code changes."""
    d = rules_copy(tmp_path, ONE_EDIT)
    edited = E.load_rules(d)
    bits = mixed_image.copy()
    rows = _data_rows_with_option(bits, USER_TIMEOUT)
    assert len(rows) > 20

    shipped_res = repair(bits, L, seed=1)
    monkeypatch.setenv(E.RULES_ENV, str(d))
    res = repair(bits, L, seed=1)
    monkeypatch.delenv(E.RULES_ENV)

    # TTL: every IPv4 packet in [100, 120]; a TTL-64 capture fails the edited rules only.
    _, v = fields_of(res.batch)
    v4 = v["ipv4_ver"] == 4
    assert v4.any() and ((v["ipv4_ttl"][v4] >= 100) & (v["ipv4_ttl"][v4] <= 120)).all()
    ttl64 = _set_ttl(shipped_res.batch, 64)
    assert not check_batch(ttl64, SHIPPED)[0]
    fails = check_batch(ttl64, edited)[0]
    assert set(fails) == {"ipv4_ttl not a legal value"}
    np.testing.assert_array_equal(fails["ipv4_ttl not a legal value"],
                                  fields_of(ttl64)[1]["ipv4_ver"] == 4)

    # The new option kind: kept by repair under the edited rules (moved to a listed kind under
    # the shipped ones), accepted by validation, and held to its declared length.
    kept = [_tcp_options(res.batch, int(i)) for i in rows]      # mixed_image has no blank rows
    assert all(o == USER_TIMEOUT for o in kept)
    assert not any(_tcp_options(shipped_res.batch, int(i)) == USER_TIMEOUT for i in rows)
    assert not check_batch(res.batch, edited)[0]
    data = res.batch.data.copy()
    for i in rows:      # a user timeout of length 2, then NOP NOP: the edited grammar says 4
        ip = int(res.batch.offset[i]) + 14
        at = ip + int(data[ip] & 15) * 4 + 20
        data[at + 1:at + 4] = (2, 1, 1)
    bad = _with(res.batch, data)
    grammar = "tcp options break the option grammar"
    assert check_batch(bad, edited)[0][grammar][rows].all()
    assert grammar not in check_batch(bad, SHIPPED)[0]    # unknown kind, sane length: skipped
