"""Every ``compute:`` name a rule file may give a field, and the code that computes it.

A field with ``compute: NAME`` is not moved to a legal value: repair fills it from other fields
and from the trace. The registry says, per name, in which *phase* that happens and where:

* ``value``: numbers that depend on the trace (addresses, sequence numbers, per-host IP IDs,
  protocol numbers, option areas, ICMP rest-of-header);
* ``length``: header, total, payload and datagram lengths, once every value (options, bodies)
  is settled;
* ``checksum``: last, over the bytes the two phases wrote (scapy's ``post_build`` order).

A computation with a ``target`` is run by :func:`run` for exactly the fields whose rule names
it, at its ``stage`` of repair: the rule file selects it, and a field that stops naming it is
repaired as any other field (its legal values, else its generated value). A computation without
a target is carried out inline by the stage named (``rows.read_rows``, ``rows.build``), which a
packet cannot do without (lengths, checksums); the entry says which code does it and what it
reads. Loading a rule file with a name missing here is an error (``engine.load_rules``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

PHASES = ("value", "length", "checksum")
# Where repair runs computations, in pipeline order; each stage's phase is never earlier than
# the previous stage's (tests/repair/test_rules_registry.py holds that).
STAGES = ("rows", "trace.flow", "trace.endpoints", "trace.hosts", "options", "time", "bodies",
          "build.lengths", "build.checksums")


@dataclass(frozen=True)
class Computation:
    name: str
    phase: str
    stage: str
    target: str | None      # "module:function(state, targets)"; None: inline at ``stage``
    doc: str
    option: bool = False    # named by option kinds (targets (rules, OptionKind)), not by fields
    option_length: int = 0  # the one total length such a kind must have (the bytes it writes)

    def function(self):
        """The callable ``target`` names (imported on first use: rules/ sits below repair)."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


REGISTRY: dict[str, Computation] = {c.name: c for c in (
    Computation("next_protocol", "value", "rows", None,
                "the carried protocol's number from its rule file's bind (ipv4.proto / ipv6.nh): "
                "rows.read_rows sets Rows.proto from each row's stack, rows.build writes it"),
    Computation("icmp_type", "value", "rows", None,
                "type and code move together to the nearest legal pair of the file's types "
                "(engine.snap_icmp, called by rows.read_rows)"),
    Computation("icmp_code", "value", "rows", None, "see icmp_type"),
    Computation("sequence", "value", "trace.flow", "netdiff.packet_repair.trace:sequence_numbers",
                "the direction's first generated number plus the bytes it sent before "
                "(SYN and FIN count one)"),
    Computation("acknowledgement", "value", "trace.flow",
                "netdiff.packet_repair.trace:acknowledgement_numbers",
                "the other direction's next sequence number at this row (the generated value "
                "while the other side has not spoken)"),
    Computation("address", "value", "trace.endpoints", "netdiff.packet_repair.trace:assign_addresses",
                "one client per IP version and one server per service from the address pool "
                "(generated addresses kept where legal); sets both endpoints of every row"),
    Computation("id_per_host", "value", "trace.hosts", "netdiff.packet_repair.trace:id_per_host",
                "the sending host's first generated value, +1 per packet it sends (class priors "
                "may choose zero or random instead)"),
    Computation("options", "value", "options", "netdiff.packet_repair.trace:walk_option_areas",
                "the option area walked with the file's option grammar (engine.walk_options) "
                "once the trace has settled the flags only_with refers to"),
    Computation("timestamps", "value", "time", "netdiff.packet_repair.trace:option_clocks",
                "an option's clock and echo once every packet has its time (RFC 7323 TCP "
                "timestamps): TSval a clock per flow direction from its first generated value "
                "(with priors a random one), one tick a millisecond; TSecr the other direction's latest TSval before it (0 without ACK "
                "or before the other side has sent one)", option=True, option_length=10),
    Computation("icmp_rest", "value", "bodies", "netdiff.packet_repair.bodies:rest_of_header",
                "the 32-bit rest of header by the type's `rest` (id_seq kept, unused zero, mtu, "
                "pointer, gateway)"),
    Computation("header_length", "length", "build.lengths", None,
                "(fixed_bytes + option bytes) / length_unit, written by rows.build from the "
                "option lengths rows.read_rows took from the filled structure"),
    Computation("total_length", "length", "build.lengths", None,
                "IP header + transport header + body, written by rows.build"),
    Computation("payload_length", "length", "build.lengths", None,
                "transport header + body (no fixed IPv6 header), written by rows.build"),
    Computation("datagram_length", "length", "build.lengths", None,
                "8 + body, written by rows.build"),
    Computation("message_length", "length", "bodies", None,
                "a payload template's length field: the bytes of the entry it `covers` (default: "
                "every byte after it), big-endian in its `bytes`; packet_repair/payloads.py"),
    Computation("ber_length", "length", "bodies", None,
                "an ASN.1 BER length in long form (0x82 and two bytes: `bytes: 3`) of the entry "
                "it `covers` (default: every byte after it); packet_repair/payloads.py"),
    Computation("checksum", "checksum", "build.checksums", None,
                "RFC 1071 over the file's checksum.covers region, plus the pseudo-header where "
                "checksum.pseudo_header (rules/checksum.py: covered_sums, stored_value); "
                "rows.build writes it, validity checks it"),
)}


def computation(name: str) -> Computation | None:
    return REGISTRY.get(name)


def targets(rules: dict, name: str) -> list:
    """(protocol rules, field rule or option kind) of every field and option kind whose rule
    file names ``name``."""
    return [(pr, fr) for pr in rules.values() for fr in pr.fields if fr.compute == name] + \
        [(pr, k) for pr in rules.values() if pr.options is not None for k in pr.options.kinds
         if k.compute == name]


def run(rules: dict, stage: str, state) -> None:
    """Run the computations of ``stage``, in registry order, on the fields that name them.

    ``state``: what the stage's functions read and write (the repair's rows and trace arrays)."""
    if stage not in STAGES:
        raise ValueError(f"unknown repair stage {stage!r}")
    for c in REGISTRY.values():
        if c.stage == stage and c.target is not None:
            t = targets(rules, c.name)
            if t:
                c.function()(state, t)
