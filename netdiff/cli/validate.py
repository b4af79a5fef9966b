"""``netdiff validate PCAP...``: tshark, tcpreplay (in a private network namespace) and
netdiff's own rule checks; exit 1 when any packet fails."""
from __future__ import annotations

import json

import click


def _replay_text(rep) -> str:
    if isinstance(rep, str):
        return f"replay {rep}"
    text = f"replay {rep['sent']} sent, {rep['failed']} failed"
    if rep.get("error"):
        text += f" ({rep['error']})"
    return text


def _line(f: dict) -> str:
    verdict = "ok" if f["ok"] else "FAIL"
    parts = [f"{f['packets']} packets", f"malformed {f['malformed']}",
             f"checksum errors {f['checksum_errors']}", f"expert errors {f['expert_errors']}",
             f"rule failures {f['rule_failed_packets']}", _replay_text(f["replay"])]
    if not f.get("app_layers", True) and f.get("app_layer_malformed"):
        parts.append(f"application-layer malformed {f['app_layer_malformed']} (not judged)")
    return f"{verdict:4} {f['path']}: " + ", ".join(parts)


@click.command("validate", short_help="Check that every packet of captures is valid.")
@click.argument("pcaps", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--replay/--no-replay", default=True, show_default=True,
              help="Replay each file with tcpreplay into a veth pair inside a network "
                   "namespace netdiff creates and removes (needs root; skipped otherwise).")
@click.option("--transport-only", is_flag=True,
              help="Judge only the link, IP and transport layers (what application-layer "
                   "dissectors call malformed is then reported, not judged).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Also write the full result to OUT/report.json.")
@click.pass_context
def validate_cmd(ctx, pcaps, as_json, replay, transport_only, out_dir):
    """Validate PCAPS three ways: (a) tshark, every layer it dissects, with IP/TCP/UDP/ICMP
    checksum validation (malformed packets, bad checksums, expert errors; each failure names its
    dissector, transport and port); (b) tcpreplay into a private veth pair;
    (c) netdiff's protocol rules (protocol_rules/*.yaml). Exit status 1 when any packet fails."""
    from pathlib import Path

    from netdiff.errors import NetdiffError
    from netdiff.io.atomic import atomic_write_text
    from netdiff.validation.pcaps import validate_pcaps

    files = []
    for p in map(Path, pcaps):      # a folder stands for every capture under it
        files += sorted(f for f in p.rglob("*") if f.suffix in (".pcap", ".pcapng")) if p.is_dir() else [p]
    if not files:
        raise NetdiffError(f"no .pcap/.pcapng files in {', '.join(pcaps)}")
    result = validate_pcaps([str(f) for f in files], replay=replay,
                            app_layers=not transport_only)
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(result, indent=1))
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        for f in result["files"]:
            click.echo(_line(f))
            for rule, count in list(f["rule_failures"].items())[:5]:
                click.echo(f"       rule: {rule}: {count} packets")
            for where, count in list(f["failures_by_dissector"].items())[:5]:
                click.echo(f"       tshark: {where}: {count} packets")
            for msg, count in list(f["expert_error_messages"].items())[:5]:
                click.echo(f"       tshark: {msg}: {count}")
            if f.get("capture_problem"):
                click.echo(f"       capture: {f['capture_problem']}")
        t = result["total"]
        if len(result["files"]) > 1:
            click.echo(f"total: {t['files']} files, {t['packets']} packets, malformed "
                       f"{t['malformed']}, checksum errors {t['checksum_errors']}, expert errors "
                       f"{t['expert_errors']}, rule failures {t['rule_failed_packets']}, "
                       f"{_replay_text(t['replay'])}")
        click.echo("all packets valid" if result["ok"] else "some packets are not valid")
    ctx.exit(0 if result["ok"] else 1)
