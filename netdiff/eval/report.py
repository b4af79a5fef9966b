"""report.json, report.md and the figures (matplotlib PNGs) of an evaluation."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from netdiff.eval.fields import decode_fields
from netdiff.eval.flows import inter_arrival_times
from netdiff.image.codec import PALETTE
from netdiff.io.atomic import atomic_path, atomic_write_bytes

FIGURES = {
    "images": "images.png",
    "field_heatmap": "field_heatmap.png",
    "distributions": "distributions.png",
    "confusion": "confusion.png",
    "mutual_information": "mutual_information.png",
    "dcr": "dcr.png",
    "flow_joint": "flow_joint.png",
}


def _clean(obj):
    """JSON-safe copy: private ("_") keys dropped, numpy scalars to Python, NaN to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return None if math.isnan(v) or math.isinf(v) else v
    return obj


def write_json(path: Path, report: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(_clean(report), indent=2, sort_keys=False) + "\n").encode())


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()      # one layout pass; bbox_inches="tight" would draw twice
        with atomic_path(path, keep_suffix=True) as tmp:   # matplotlib picks the format by suffix
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


# --- figures ------------------------------------------------------------------------------------

def _image_of(ts, image_id: int) -> np.ndarray:
    """The image's packet rows (padding rows left out, so small images stay readable)."""
    rows = ts.bits[ts.image == image_id][: ts.layout.height]
    return PALETTE[rows.astype(np.intp) + 1]


def fig_images(real, synth, path: Path) -> None:
    import matplotlib.pyplot as plt

    shared = [c for c in range(len(real.classes)) if (real.label == c).any() and (synth.label == c).any()]
    shared = shared[:4] or [None]
    fig, axes = plt.subplots(len(shared), 2, figsize=(10, 3.2 * len(shared)), squeeze=False)
    for row, c in enumerate(shared):
        for col, (name, ts) in enumerate((("real", real), ("synthetic", synth))):
            rows = np.flatnonzero(ts.label == c) if c is not None else np.arange(len(ts))
            ax = axes[row, col]
            if len(rows):
                ax.imshow(_image_of(ts, int(ts.image[rows[0]])), aspect="auto", interpolation="nearest")
            ax.set_title(f"{name}: {ts.classes[c] if c is not None else 'all'}", fontsize=9)
            ax.set_xlabel("nPrint column")
            ax.set_ylabel("packet")
    fig.suptitle("first image of each class (red 1, green 0, blue absent; padding rows not shown)")
    _savefig(fig, path)


def _section_ticks(ax, layout) -> None:
    starts, labels = [], []
    for name, sl in layout.fields.items():
        sec = name.split("_")[0]
        if not labels or labels[-1] != sec:
            starts.append(sl.start)
            labels.append(sec)
    for s in starts[1:]:
        ax.axvline(s - 0.5, color="white", lw=0.8)
    ax.set_xticks(starts)
    ax.set_xticklabels(labels, fontsize=8, rotation=0, ha="left")


def fig_field_heatmap(layout, rows: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib.pyplot as plt

    from matplotlib.colors import PowerNorm

    fig, ax = plt.subplots(figsize=(12, 1.0 + 0.5 * len(rows)))
    m = np.vstack(list(rows.values()))
    # Square-root colour scale up to the largest value: small distances stay visible.
    im = ax.imshow(m, aspect="auto", cmap="magma", norm=PowerNorm(0.5, vmin=0, vmax=max(m.max(), 1e-4)),
                   interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(rows), fontsize=8)
    _section_ticks(ax, layout)
    fig.colorbar(im, ax=ax, label="JSD per column", fraction=0.03)
    ax.set_title("per-column JSD against real traffic over the image layout")
    _savefig(fig, path)


def _cdf(ax, values, label):
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    if len(v):
        ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)


def fig_distributions(real, synth, real_flows, synth_flows, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax = axes[0, 0]
    lengths = {name: decode_fields(ts.bits, ts.layout)["packet_length"] for name, ts in
               (("real", real), ("synthetic", synth))}
    lengths = {k: v[v >= 0] for k, v in lengths.items()}
    # Shared bins up to the real 99.5th percentile (offloaded jumbo segments would squash the rest).
    top = max(1514.0, float(np.quantile(lengths["real"], 0.995))) if len(lengths["real"]) else 1514.0
    bins = np.linspace(0, top, 61)
    for name, v in lengths.items():
        ax.hist(np.clip(v, 0, top), bins=bins, alpha=0.5, density=True, label=name)
    ax.set_title("IP packet length (last bin holds longer packets)")
    ax.set_xlabel("bytes")
    ax = axes[0, 1]
    for name, ts in (("real", real), ("synthetic", synth)):
        _cdf(ax, np.log10(np.maximum(inter_arrival_times(ts), 1e-6)), name)
    ax.set_title("inter-arrival time CDF")
    ax.set_xlabel("log10 seconds")
    for ax, stat, unit in ((axes[1, 0], "bytes", "bytes"), (axes[1, 1], "duration", "seconds")):
        for name, t in (("real", real_flows), ("synthetic", synth_flows)):
            if len(t):
                _cdf(ax, np.log10(1 + t[stat].to_numpy(float)), name)
        ax.set_title(f"flow {stat} CDF")
        ax.set_xlabel(f"log10(1 + {unit})")
    for ax in axes.flat:
        ax.legend(fontsize=8)
    _savefig(fig, path)


def fig_confusion(results: dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    ok = {k: v for k, v in results.items() if v and "confusion" in v}
    fig, axes = plt.subplots(1, max(len(ok), 1), figsize=(6 * max(len(ok), 1), 5.5), squeeze=False)
    for ax, (name, r) in zip(axes[0], ok.items()):
        cm = np.asarray(r["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(r["labels"])))
        ax.set_xticklabels(r["labels"], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(r["labels"])))
        ax.set_yticklabels(r["labels"], fontsize=7)
        for i in range(len(cm)):
            for j in range(len(cm)):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_title(f"{name}: macro-F1 {r['macro_f1']:.2f}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (real test half)")
    if not ok:
        axes[0, 0].text(0.5, 0.5, "no classifier result (one class only)", ha="center")
        axes[0, 0].axis("off")
    _savefig(fig, path)


def fig_mutual_information(nmi: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    names = nmi.get("fields", [])
    mats = (("real", nmi.get("_real")), ("synthetic", nmi.get("_synthetic")))
    for ax, (title, m) in zip(axes, (*mats, ("|real - synthetic|", None))):
        if title.startswith("|") and mats[0][1] is not None and mats[1][1] is not None:
            m = np.abs(mats[0][1] - mats[1][1])
        if m is None:
            ax.axis("off")
            continue
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.set_title(f"NMI between header fields: {title}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.045)
    _savefig(fig, path)


def fig_dcr(raw: dict, near: float, path: Path) -> None:
    import matplotlib.pyplot as plt

    units = ("packets", "flows", "images")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, unit in zip(axes, units):
        for side in ("synthetic", "holdout"):
            d = raw.get((unit, side))
            if d is not None and len(d):
                ax.hist(d, bins=np.linspace(0, max(0.05, float(np.max(d))), 40), alpha=0.55,
                        label=f"{side} (median {np.median(d):.3f})")
        ax.axvline(near, color="red", ls="--", lw=1, label=f"near copy <= {near}")
        ax.set_title(f"{unit}: distance to closest training record")
        ax.set_xlabel("Hamming over present bits (share)")
        ax.legend(fontsize=7)
    _savefig(fig, path)


def fig_flow_joint(real_flows, synth_flows, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, t, m in (("real", real_flows, "o"), ("synthetic", synth_flows, "x")):
        if len(t):
            ax.scatter(np.log10(1 + t["bytes"].to_numpy(float)), np.log10(1 + t["duration"].to_numpy(float)),
                       s=8, alpha=0.5, marker=m, label=f"{name} ({len(t)} flows)")
    ax.set_xlabel("log10(1 + flow bytes)")
    ax.set_ylabel("log10(1 + flow seconds)")
    ax.set_title("flow size vs duration")
    ax.legend(fontsize=8)
    _savefig(fig, path)


def make_figures(out: Path, extras: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    real, synth = extras["sets"]["real"], extras["sets"]["synthetic"]
    flows = extras["flows"]
    main = extras["main"]
    out.mkdir(parents=True, exist_ok=True)
    fig_images(real, synth, out / FIGURES["images"])
    fig_field_heatmap(real.layout, {"synthetic": main["fidelity"]["_column_jsd"],
                                    "real vs real": extras["cal_rr"]["fidelity"]["_column_jsd"],
                                    "column marginal": extras["cal_cm"]["fidelity"]["_column_jsd"]},
                      out / FIGURES["field_heatmap"])
    fig_distributions(real, synth, flows["real"], flows["synthetic"], out / FIGURES["distributions"])
    fig_confusion({"TSTR": extras["util"]["tstr"]["packet_bits"]["random_forest"],
                   "TRTR": extras["util"]["trtr"]["packet_bits"]["random_forest"]},
                  out / FIGURES["confusion"])
    fig_mutual_information(main["nmi"], out / FIGURES["mutual_information"])
    fig_dcr(extras["audit"]["_raw"], extras["audit"]["near_threshold"], out / FIGURES["dcr"])
    fig_flow_joint(flows["real"], flows["synthetic"], out / FIGURES["flow_joint"])
    return list(FIGURES.values())


# --- markdown -----------------------------------------------------------------------------------

def _f(x, nd=3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2e}" if 0 < abs(x) < 10 ** -nd else f"{x:.{nd}f}"


def _copy_cell(rep: dict, unit: str, key: str, side: str = "synthetic") -> str:
    return _f(rep.get("copy_rate", {}).get(unit, {}).get(side, {}).get(key), 3)


def _dcr_cell(rep: dict, unit: str, side: str = "synthetic") -> str:
    d = rep.get("dcr", {}).get(unit, {}).get(side)
    return "n/a" if not d or d.get("median") is None else f"{d['median']:.3f} / {d['p5']:.3f}"


def markdown(report: dict) -> str:
    rr = report["calibration"]["real_vs_real"]
    cm = report["calibration"]["column_marginal"]
    inp = report["inputs"]
    lines = ["# netdiff evaluation report", ""]
    for name in ("real", "synthetic", "training"):
        if inp.get(name):
            lines.append(f"- **{name}**: `{inp[name]['path']}` ({inp[name]['kind']}, "
                         f"{inp[name]['packets']} packets, {len(inp[name]['classes'])} classes)")
    lines += [f"- compared on {report['layout']['columns']} nPrint columns (layout "
              f"`{report['layout']['name']}`), seed {report['seed']}", "",
              "## Headline numbers with their calibration", "",
              "Real vs real = one half of the real set against the other (the floor a perfect "
              "generator reaches); column marginal = every nPrint column drawn independently from "
              "the real marginals (a naive baseline).", "",
              "| measure | synthetic | real vs real | column marginal |", "|---|---|---|---|"]
    rows = [
        ("JSD per column, mean", lambda r: _f(r["jsd"]["overall"], 4)),
        ("TVD per column, mean", lambda r: _f(r["tvd"]["overall"], 4)),
        ("Hellinger per column, mean", lambda r: _f(r["hellinger"]["overall"], 4)),
        ("decoded header fields JSD, mean", lambda r: _f(r["decoded_field_jsd"]["overall"], 4)),
        ("C2ST AUC, packet bits (0.5 = indistinguishable)", lambda r: _f(r["c2st_auc"]["overall"], 3)),
        ("C2ST AUC, flow features", lambda r: _f(r["c2st_auc"]["flows"], 3)),
        ("mutual-information distance (header fields)",
         lambda r: _f(r["mutual_information_distance"]["overall"], 4)),
        ("flow size-duration JSD",
         lambda r: _f(r["mutual_information_distance"]["flow_size_duration"].get("size_duration_jsd"), 4)),
        ("TSTR macro-F1 (random forest, packet bits)", lambda r: _f(r["tstr"]["overall"], 3)),
        ("near-copy rate, packets", lambda r: _copy_cell(r, "packets", "near_copy_rate")),
        ("near-copy rate, flows", lambda r: _copy_cell(r, "flows", "near_copy_rate")),
        ("near-copy rate, images", lambda r: _copy_cell(r, "images", "near_copy_rate")),
        ("DCR packets, median / 5th pct", lambda r: _dcr_cell(r, "packets")),
    ]
    for label, get in rows:
        lines.append(f"| {label} | {get(report)} | {get(rr)} | {get(cm)} |")
    lines += ["", f"TRTR macro-F1 (trained and tested on real halves): {_f(report['trtr']['overall'])}.", ""]
    lines += ["## Per class", "", "| class | JSD | C2ST AUC | MI distance | flow size-duration JSD | "
              "TSTR F1 | TRTR F1 |", "|---|---|---|---|---|---|---|"]
    mi = report["mutual_information_distance"]
    for c in report["classes"]:
        lines.append(f"| {c} | {_f(report['jsd']['per_class'].get(c), 4)} | "
                     f"{_f(report['c2st_auc']['per_class'].get(c))} | "
                     f"{_f(mi['per_class'].get(c))} | "
                     f"{_f(mi.get('flow_size_duration_per_class', {}).get(c), 4)} | "
                     f"{_f(report['tstr'].get('per_class', {}).get(c))} | "
                     f"{_f(report['trtr'].get('per_class', {}).get(c))} |")
    lines += ["", "## What gives synthetic packets away", "",
              "Fields the real-vs-synthetic classifier relies on most (importance summed over the "
              "field's bits):", ""]
    for t in report["c2st_auc"]["top_fields"]:
        lines.append(f"- `{t['field']}`: {t['importance']:.3f}")
    lines += ["", "Header-field pairs whose dependence differs most (NMI real -> synthetic):", ""]
    for p in report["mutual_information_distance"]["worst_pairs"]:
        lines.append(f"- {p['pair'][0]} x {p['pair'][1]}: {p['real']:.3f} -> {p['synthetic']:.3f}")
    lines += ["", "## Memorisation audit", "",
              f"Reference: {report['memorisation_reference']}. Distance = share of present bits that "
              "differ (addresses excluded); near copy = at most 1%.", "",
              "| unit | synthetic DCR median / p5 | held-out DCR median / p5 | synthetic exact / near copies "
              "| held-out exact / near copies |", "|---|---|---|---|---|"]
    for unit in ("packets", "flows", "images"):
        lines.append(f"| {unit} | {_dcr_cell(report, unit)} | {_dcr_cell(report, unit, 'holdout')} | "
                     f"{_copy_cell(report, unit, 'exact_copy_rate')} / {_copy_cell(report, unit, 'near_copy_rate')} | "
                     f"{_copy_cell(report, unit, 'exact_copy_rate', 'holdout')} / "
                     f"{_copy_cell(report, unit, 'near_copy_rate', 'holdout')} |")
    aug = report["utility"].get("augmentation", {})
    lines += ["", "## Augmentation", ""]
    if "skipped" in aug:
        lines.append(f"skipped: {aug['skipped']}")
    else:
        lines.append(f"Class `{aug['class']}` cut to {aug['real_packets_kept']} real training packets: "
                     f"class F1 {_f(aug['real_only'].get('class_f1'))} (macro {_f(aug['real_only'].get('macro_f1'))}) "
                     f"-> {_f(aug['augmented'].get('class_f1'))} (macro {_f(aug['augmented'].get('macro_f1'))}) "
                     f"with {aug['synthetic_packets_added']} synthetic packets added.")
    lines += ["", "## Compliance (netdiff validate)", ""]
    comp = report["compliance"]
    if "total" in comp:
        lines += ["| set | packets | malformed | checksum errors | expert errors | rule failures | ok |",
                  "|---|---|---|---|---|---|---|"]
        for name, part in (("synthetic", comp), ("real (floor, no replay)", comp.get("real") or {})):
            t = part.get("total") or {}
            if t:
                lines.append(f"| {name} | {t.get('packets')} | {t.get('malformed')} | "
                             f"{t.get('checksum_errors')} | {t.get('expert_errors')} | "
                             f"{t.get('rule_failed_packets')} | {part.get('ok')} |")
        if isinstance((comp.get("total") or {}).get("replay"), (dict, str)):
            lines += ["", f"replay of the synthetic pcaps: {comp['total']['replay']}"]
    else:
        lines += ["```", json.dumps(_clean(comp), indent=1)[:3000], "```"]
    if report.get("figures"):
        lines += ["", "## Figures", ""]
        for name in report["figures"]:
            lines += [f"![{name}]({name})", ""]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timing_s"].items()), ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict, extras: dict, figures: bool = True) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report["figures"] = make_figures(out, extras) if figures else []
    write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", markdown(report).encode())
