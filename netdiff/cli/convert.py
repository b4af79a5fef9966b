"""Conversion commands: nprint (nPrint-compatible), pcap2img, img2pcap, samples, demo."""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import click

from netdiff.cli.folders import checks_inputs, locks_output
from netdiff.errors import NetdiffError


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


# --- nprint -----------------------------------------------------------------------------------

@click.command("nprint", short_help="nPrint-compatible pcap -> CSV (and -N CSV -> pcap).",
               context_settings={"ignore_unknown_options": False})
@click.option("-P", "pcap_file", type=click.Path(dir_okay=False), help="pcap/pcapng infile")
@click.option("-N", "nprint_file", type=click.Path(dir_okay=False), help="nPrint CSV infile (-> pcap, needs -W)")
@click.option("-W", "write_file", type=click.Path(dir_okay=False), help="output file, else stdout")
@click.option("-r", "radiotap", is_flag=True, help="include radiotap headers (radiotap captures)")
@click.option("-w", "wlan", is_flag=True, help="include 802.11 headers (radiotap captures)")
@click.option("-e", "eth", is_flag=True, help="include ethernet headers")
@click.option("-4", "ipv4", is_flag=True, help="include ipv4 headers")
@click.option("-6", "ipv6", is_flag=True, help="include ipv6 headers")
@click.option("-t", "tcp", is_flag=True, help="include tcp headers")
@click.option("-u", "udp", is_flag=True, help="include udp headers")
@click.option("-i", "icmp", is_flag=True, help="include icmp headers")
@click.option("-p", "payload", type=click.IntRange(0, 65535), default=0, help="include n bytes of payload")
@click.option("-c", "count", type=click.IntRange(0), default=0, help="number of packets to read (0 = all)")
@click.option("-R", "relative", is_flag=True, help="include relative timestamp field (rts)")
@click.option("-A", "absolute", is_flag=True, help="include absolute timestamp fields")
@click.option("-F", "fill", type=click.IntRange(-1, 1), default=-1, help="fill value for absent bits")
@click.option("-O", "index", type=click.IntRange(0, 5), default=0,
              help="index: 0 src ip, 1 dst ip, 2 src port, 3 dst port, 4 flow, 5 tx mac")
@click.option("-d", "device", hidden=True)
@click.option("-f", "bpf_filter", hidden=True)
@click.option("-x", "regex", hidden=True)
@click.option("-I", "ip_file", hidden=True)
@click.option("-C", "csv_file", hidden=True)
def nprint_cmd(pcap_file, nprint_file, write_file, radiotap, wlan, eth, ipv4, ipv6, tcp, udp, icmp, payload, count,
               relative, absolute, fill, index, device, bpf_filter, regex, ip_file, csv_file):
    """Run with the nPrint tool's own flags, e.g.

      netdiff nprint -P in.pcap -4 -6 -t -u -i -p 0 -c 1024 -R -A -W out.csv

    Output is byte-identical to nPrint 1.2.1 on every link type (radiotap captures give a row
    per packet, -r/-w hold their headers); where nPrint reads past a packet's captured bytes or
    overflows a timestamp netdiff differs on purpose (docs/nprint.md). Reverse mode:
    netdiff nprint -N in.csv -W out.pcap (timestamps kept; payload not in the CSV is zero).
    """
    from netdiff.bits.layout import Layout
    from netdiff.nprint_csv.writer import pcap_to_csv, skipped_summary

    for flag, val in (("-d (live capture)", device), ("-f (BPF filter)", bpf_filter),
                      ("-x (regex)", regex), ("-I (IP file)", ip_file), ("-C (hex CSV input)", csv_file)):
        if val is not None:
            raise NetdiffError(f"nPrint option {flag} is not supported by netdiff")
    if bool(pcap_file) == bool(nprint_file):
        raise NetdiffError("give exactly one input: -P capture or -N nPrint CSV")
    if nprint_file:
        if not write_file:
            raise NetdiffError("-N (nPrint CSV -> pcap) needs -W for the output pcap")
        from netdiff.nprint_csv.reader import csv_to_pcap
        n = csv_to_pcap(nprint_file, write_file)
        click.echo(f"wrote {n} packets to {write_file}", err=True)
        return
    sections = tuple(s for s, on in (("eth", eth), ("ipv4", ipv4), ("ipv6", ipv6), ("tcp", tcp),
                                     ("udp", udp), ("icmp", icmp)) if on)
    wireless = tuple(s for s, on in (("radiotap", radiotap), ("wlan", wlan)) if on)
    if not sections and not payload and not wireless:
        raise NetdiffError("choose at least one of -r -w -e -4 -6 -t -u -i or -p N")
    layout = Layout(sections=sections, payload_bytes=payload, name="nprint")
    out = write_file if write_file else sys.stdout.buffer
    res = pcap_to_csv(pcap_file, out, layout, index=index, relative=relative, absolute=absolute,
                      count=count, fill=fill, wireless=wireless)
    msg = f"{res['rows']} rows from {res['packets_read']} packets"
    if res["radiotap_rows"]:
        msg += f" ({res['radiotap_rows']} radiotap rows: no IP, as nPrint writes them)"
    if res["skipped"]:
        msg += f"; no row for {skipped_summary(res['skipped'])}"
    if res["stopped"]:
        msg += f"; stopped early: {res['stopped']}"
    click.echo(msg, err=True)


# --- pcap2img ---------------------------------------------------------------------------------

@click.command("pcap2img", short_help="Captures -> 3-colour nPrint images + JSON sidecars.")
@click.argument("inp", type=click.Path())
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--class", "cls", help="class name (default: the capture's folder name)")
@click.option("--layout", "layout_name", type=click.Choice(["netdiffusion", "nprint", "full"]),
              default="netdiffusion", show_default=True,
              help="netdiffusion: 1088 columns, no addresses; nprint: with addresses; full: + ethernet")
@click.option("--payload-bytes", type=click.IntRange(0, 1500), default=0, show_default=True,
              help="payload bytes per packet kept in the image")
@click.option("--height", type=click.IntRange(1, 65536), default=1024, show_default=True,
              help="packets (rows) per image; short images are padded with fill rows")
@click.option("--group", type=click.Choice(["file", "flow", "window"]), default="file", show_default=True,
              help="file: consecutive packets of a capture; flow: per bidirectional 5-tuple; "
                   "window: N packets per image")
@click.option("--window", type=click.IntRange(1), help="packets per image with --group window")
@click.option("--max-images", type=click.IntRange(1), help="at most this many images per capture")
@click.option("--min-packets", type=click.IntRange(1), default=1, show_default=True,
              help="with --group flow: skip flows with fewer packets")
@click.option("--no-payload", is_flag=True, help="do not keep payload bytes in the sidecars")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@checks_inputs("inp")
@locks_output("out_dir")
def pcap2img_cmd(inp, out_dir, cls, layout_name, payload_bytes, height, group, window, max_images,
                 min_packets, no_payload, as_json):
    """Convert a capture, or a directory of <class>/*.pcap, into images under OUT_DIR/<class>/,
    with OUT_DIR/timing.json (inter-arrival model) and OUT_DIR/field_priors.json (header field
    distributions) per class, for img2pcap --timing / --priors."""
    from netdiff.bits.layout import named_layout
    from netdiff.pipeline.conversions import pcap2img

    layout = named_layout(layout_name, payload_bytes=payload_bytes, height=height)
    t0 = time.perf_counter()
    s = pcap2img(inp, out_dir, layout=layout, cls=cls, group=group, window=window,
                 keep_payload=not no_payload, max_images=max_images, min_packets=min_packets)
    dt = time.perf_counter() - t0
    if as_json:
        _echo_json({**s.to_dict(), "seconds": round(dt, 3), "layout": layout.to_dict()})
    else:
        click.echo(f"{s.images} images ({layout.width}x{layout.height}) from {s.files} captures: "
                   f"{s.rows} packets of {s.packets_read} read, in {dt:.2f} s -> {out_dir}")
        if s.decapsulated:
            parts = ", ".join(f"{name} {n}" for name, n in s.decapsulated.most_common())
            click.echo(f"  IP found under other headers: {parts}")
        for reason, n in s.skipped.most_common():
            click.echo(f"  no row for {n} packets: {reason}")
        for note in s.notes:
            click.echo(f"  note: {note}")
    for err in s.errors:
        click.echo(f"netdiff: error: {err}", err=True)
    if s.errors:
        sys.exit(1)


# --- img2pcap ---------------------------------------------------------------------------------

def _img2pcap_writes_folder(params: dict) -> bool:
    """One PNG in, OUT a file name: the output is that one pcap, not a folder."""
    out = str(params["out"])
    return not Path(params["inp"]).is_file() or Path(out).is_dir() or out.endswith("/")


@click.command("img2pcap", short_help="Images -> pcaps (exact with a sidecar, repaired otherwise).")
@click.argument("inp", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--strict", is_flag=True, help="refuse to repair: report what is wrong instead")
@click.option("--seed", type=int, default=0, show_default=True, help="seed for repair choices")
@click.option("--address-pool", help="CIDR(s) for repaired addresses, comma-separated (default: private ranges)")
@click.option("--timing", type=click.Path(exists=True, dir_okay=False),
              help="inter-arrival model JSON (learned from training sidecars)")
@click.option("--priors", type=click.Path(exists=True, dir_okay=False),
              help="class field priors JSON (field_priors.json written by pcap2img): values the "
                   "image's class never shows are replaced by ones it shows")
@click.option("--json", "as_json", is_flag=True, help="print results as JSON")
@checks_inputs("inp")
@locks_output("out", folder=_img2pcap_writes_folder)
def img2pcap_cmd(inp, out, strict, seed, address_pool, timing, priors, as_json):
    """Rebuild pcaps from a PNG or a directory of PNGs (mirrored under OUT).

    An image with the sidecar of a converted capture is rebuilt exactly (every header bit and
    timestamp equal to the original's); any other image goes through repair."""
    from netdiff.pipeline.conversions import ImageResult, img2pcap_many

    timing_model = None
    if timing:
        from netdiff.packet_repair import TimingModel
        timing_model = TimingModel.load(timing)
    field_priors = None
    if priors:
        from netdiff.packet_repair.priors import FieldPriors
        field_priors = FieldPriors.load(priors)
    modes: Counter = Counter()
    packets = 0
    errors = []
    results = []
    for r in img2pcap_many(Path(inp), Path(out), strict=strict, seed=seed, address_pool=address_pool,
                           timing=timing_model, priors=field_priors):
        if isinstance(r, ImageResult):
            modes[r.mode] += 1
            packets += r.packets
            results.append(r.__dict__)
            if not as_json:
                for note in r.notes:
                    click.echo(f"  note: {r.png}: {note}")
        else:
            errors.append(r)
            click.echo(f"netdiff: error: {r}", err=True)
    if as_json:
        _echo_json({"images": results, "errors": errors})
    else:
        parts = ", ".join(f"{n} {m}" for m, n in sorted(modes.items())) or "none"
        click.echo(f"{sum(modes.values())} pcaps ({parts}), {packets} packets -> {out}")
    if errors:
        sys.exit(1)


# --- samples and demo -----------------------------------------------------------------------

@click.command("samples", short_help="Write netdiff's seeded sample captures.")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--scale", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="multiply the number of flows")
@locks_output("out_dir")
def samples_cmd(out_dir, seed, scale):
    """TCP (handshake, data, teardown), DNS over UDP and ICMP echo captures under OUT_DIR/<class>/."""
    from netdiff.pipeline.sample_captures import write_samples

    paths = write_samples(out_dir, seed=seed, scale=scale)
    click.echo(f"wrote {len(paths)} captures under {out_dir}")


@click.command("demo", short_help="Round trip on netdiff's own samples, with a summary.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="out/demo", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@locks_output("out_dir")
def demo_cmd(out_dir, seed):
    """samples -> pcap2img -> img2pcap -> compare every packet with the original."""
    from netdiff.pipeline.demo import run_demo

    summary = run_demo(Path(out_dir), seed=seed, echo=click.echo)
    if not summary["ok"]:
        sys.exit(1)
