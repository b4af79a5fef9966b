"""``evaluate``: every measure of a synthetic set against a real one, in one report.

Steps (each timed in ``report["timing_s"]``):
1. load the folders (pcaps -> NPRINT rows with flows; PNGs -> their layout's rows);
2. calibration sets: the real set cut in halves A/B, and a column-marginal sample of A;
3. restrict everything to the columns all inputs share;
4. fidelity, joint structure and two-sample tests of synthetic vs real, per class and overall,
   and of the calibration sets (A vs B, sampler vs B);
5. utility: classifiers trained on A (TRTR), on synthetic (TSTR), on the sampler, tested on B;
6. memorisation audit against the training set (``training``, or A when none is given);
7. compliance of synthetic pcaps (``netdiff.validation``), then report.json, report.md, figures.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from netdiff.errors import NetdiffError
from netdiff.eval import c2st as C
from netdiff.eval import fidelity as F
from netdiff.eval import memorization as M
from netdiff.eval import mutual_info as MI
from netdiff.eval import utility as U
from netdiff.eval.calibration import column_marginal_sample, split_flows, split_real
from netdiff.eval.fields import decode_fields
from netdiff.eval.flows import FLOW_FEATURES, flow_matrix, flow_table
from netdiff.eval.load import TrafficSet, common_layout, load_dir, restrict

REPORT_VERSION = 1
MIN_CLASS_ROWS = 10     # per-class measures need this many rows on both sides
STEPS = ("load", "calibration sets", "fidelity", "utility", "memorisation", "compliance", "report")


class _Steps:
    """A progress bar over the evaluation steps, plus their timings."""

    def __init__(self, progress: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=len(STEPS), desc="evaluate", disable=not progress, unit="step")
        self.timing: dict[str, float] = {}
        self._t = time.perf_counter()

    def done(self, name: str):
        now = time.perf_counter()
        self.timing[name] = round(now - self._t, 3)
        self._t = now
        self.bar.set_postfix_str(name)
        self.bar.update(1)

    def close(self):
        self.bar.close()


def _class_rows(ts: TrafficSet, c: int) -> np.ndarray:
    return np.flatnonzero(ts.label == c)


def compare(real: TrafficSet, synth: TrafficSet, real_flows, synth_flows, rng, seed: int) -> dict:
    """Fidelity, joint structure and C2ST of one candidate set against a real set, overall and
    per class (classes with at least MIN_CLASS_ROWS rows on both sides)."""
    names = U.feature_names(real)
    rx, sx = U.packet_features(real), U.packet_features(synth)
    rfields, sfields = decode_fields(real.bits, real.layout), decode_fields(synth.bits, synth.layout)

    def one(rrows, srows, rft, sft):
        r, s = real.take(rrows), synth.take(srows)
        fid = F.fidelity(r, s, rft, sft)
        nmi = MI.field_nmi({k: v[rrows] for k, v in rfields.items()},
                           {k: v[srows] for k, v in sfields.items()})
        return fid, nmi, C.c2st(rx[rrows], sx[srows], rng, seed, names)

    all_r, all_s = np.arange(len(real)), np.arange(len(synth))
    fid, nmi, test = one(all_r, all_s, real_flows, synth_flows)
    flow_test = None
    if len(real_flows) and len(synth_flows):
        flow_test = C.c2st(flow_matrix(real_flows), flow_matrix(synth_flows), rng, seed,
                           list(FLOW_FEATURES), by_field=False)
    per_class = {}
    for c, name in enumerate(real.classes):
        rr, sr = _class_rows(real, c), _class_rows(synth, c)
        if len(rr) < MIN_CLASS_ROWS or len(sr) < MIN_CLASS_ROWS:
            continue
        rf_c, sf_c = real_flows[real_flows["label"] == c], synth_flows[synth_flows["label"] == c]
        f_c, n_c, t_c = one(rr, sr, rf_c, sf_c)
        tf_c = C.c2st(flow_matrix(rf_c), flow_matrix(sf_c), rng, seed) if len(rf_c) and len(sf_c) else None
        per_class[name] = {"fidelity": f_c, "nmi": n_c, "c2st": t_c, "c2st_flows": tf_c,
                           "flow_joint": MI.flow_joint(rf_c, sf_c)}
    return {"fidelity": fid, "nmi": nmi, "c2st": test, "c2st_flows": flow_test,
            "flow_joint": MI.flow_joint(real_flows, synth_flows), "per_class": per_class}


def _keyed(result: dict) -> dict:
    """The stable report keys of one comparison (overall + per class)."""
    pc = result["per_class"]
    fid = result["fidelity"]

    def both(get):
        return {"overall": get(fid, result), "per_class": {c: get(v["fidelity"], v) for c, v in pc.items()}}
    auc = lambda t: None if t is None else t["auc"]  # noqa: E731
    return {
        "jsd": both(lambda f, r: f["jsd"]),
        "tvd": both(lambda f, r: f["tvd"]),
        "hellinger": both(lambda f, r: f["hellinger"]),
        "decoded_field_jsd": both(lambda f, r: f["decoded_field_jsd_mean"]),
        "c2st_auc": {"overall": auc(result["c2st"]), "flows": auc(result["c2st_flows"]),
                     "per_class": {c: auc(v["c2st"]) for c, v in pc.items()},
                     "flows_per_class": {c: auc(v["c2st_flows"]) for c, v in pc.items()},
                     "top_fields": (result["c2st"] or {}).get("top_fields", []),
                     "top_flow_features": (result["c2st_flows"] or {}).get("top_fields", [])},
        "mutual_information_distance": {
            "overall": result["nmi"]["distance"],
            "per_class": {c: v["nmi"]["distance"] for c, v in pc.items()},
            "worst_pairs": result["nmi"].get("worst_pairs", []),
            "flow_size_duration": result["flow_joint"],
            # pooled, a class with many flows weighs more: per class says which class's flows are off
            "flow_size_duration_per_class": {c: v["flow_joint"]["size_duration_jsd"] for c, v in pc.items()}},
    }


def _utility(train: TrafficSet, train_flows, test: TrafficSet, test_flows, rng, seed) -> dict:
    out = {"packet_bits": U.classify(U.packet_features(train), train.label, U.packet_features(test),
                                     test.label, test.classes, rng, seed)}
    if len(train_flows) and len(test_flows):
        out["flow_features"] = U.classify(flow_matrix(train_flows), train_flows["label"].to_numpy(),
                                          flow_matrix(test_flows), test_flows["label"].to_numpy(),
                                          test.classes, rng, seed)
    return out


def _headline(util: dict) -> dict:
    """Macro-F1 and per-class F1 of the primary model (random forest on packet bits)."""
    rf = util["packet_bits"]["random_forest"]
    if "skipped" in rf:
        return {"overall": None, "per_class": {}, "skipped": rf["skipped"]}
    models = {f"{kind}/{feat}": r.get("macro_f1") for feat, v in util.items() for kind, r in v.items()}
    return {"overall": rf["macro_f1"], "per_class": rf["per_class"], "models": models}


def _memo_keys(audit: dict) -> tuple[dict, dict]:
    units = audit["units"]
    dcr = {u: {side: {k: v[k] for k in ("median", "p5", "audited")} for side, v in row.items()}
           for u, row in units.items()}
    copy = {u: {side: {k: v[k] for k in ("exact_copy_rate", "near_copy_rate")} for side, v in row.items()}
            for u, row in units.items()}
    return dcr, copy


def _validate(paths: list[str], **kwargs) -> dict:
    from netdiff.validation.pcaps import validate_pcaps

    try:
        result = validate_pcaps(paths, **kwargs)
    except NetdiffError as e:
        return {"error": str(e)}
    if not isinstance(result, dict):
        return {"result": result}
    # The summary, and per file only the counts (frame lists and messages stay in `netdiff validate`).
    slim = ("path", "packets", "malformed", "checksum_errors", "expert_errors",
            "failures_by_dissector", "rule_failures", "rule_failed_packets", "ok")
    return {"ok": result.get("ok"), "total": result.get("total"),
            "files": [{k: f.get(k) for k in slim} for f in result.get("files", [])]}


def _compliance(synth: TrafficSet, real: TrafficSet) -> dict:
    """`netdiff validate` (every layer tshark dissects) on the synthetic pcaps, and (without
    replay) on the real ones: real captures often fail checksum checks too (checksum offload),
    which is the floor to read the synthetic numbers against."""
    if not synth.pcap_paths:
        return {"skipped": "the synthetic set holds images, not pcaps (convert them with img2pcap)"}
    out = _validate(synth.pcap_paths)
    if real.pcap_paths:
        floor = _validate(real.pcap_paths, replay=False)
        out["real"] = {k: floor.get(k) for k in ("ok", "total", "error") if k in floor}
    return out


def evaluate(real, synthetic, out, training=None, seed: int = 0, *, figures: bool = True,
             compliance: bool = True, progress: bool | None = None) -> dict:
    """Evaluate the synthetic folder against the real one; writes out/report.json, report.md and
    the figures, and returns the report (see docs/evaluate.md for its keys).

    ``figures=False`` skips the PNGs; ``compliance=False`` skips `netdiff validate` (tshark and
    tcpreplay, the slowest step on many files)."""
    progress = sys.stderr.isatty() if progress is None else progress
    out = Path(out)
    steps = _Steps(progress)
    rng = np.random.default_rng(seed)

    # 1. Load.
    real_ts, synth_ts = load_dir(real, progress), load_dir(synthetic, progress)
    train_ts = load_dir(training, progress) if training is not None else None
    classes = sorted(set(real_ts.classes) | set(synth_ts.classes)
                     | (set(train_ts.classes) if train_ts is not None else set()))
    real_ts, synth_ts = real_ts.relabel(classes), synth_ts.relabel(classes)
    train_ts = train_ts.relabel(classes) if train_ts is not None else None
    steps.done("load")

    # 2. Calibration sets, built on the real set's own columns (addresses give the sample flows).
    a_rows, b_rows = split_real(real_ts, rng)
    real_a, real_b = real_ts.take(a_rows).reblock(), real_ts.take(b_rows).reblock()
    fa_rows, fb_rows = split_flows(real_ts, rng)
    flow_a, flow_b = real_ts.take(fa_rows).reblock(), real_ts.take(fb_rows).reblock()
    marginal = column_marginal_sample(real_a, rng, real_b.class_counts())
    layout = common_layout(*[t.layout for t in (real_ts, synth_ts, train_ts) if t is not None])
    real_ts, synth_ts, real_a, real_b, marginal, flow_a, flow_b = (
        restrict(t, layout) for t in (real_ts, synth_ts, real_a, real_b, marginal, flow_a, flow_b))
    train_ts = restrict(train_ts, layout) if train_ts is not None else None
    flows = {name: flow_table(t) for name, t in (("real", real_ts), ("synthetic", synth_ts),
                                                  ("a", real_a), ("b", real_b), ("marginal", marginal))}
    steps.done("calibration sets")

    # 3. Fidelity, joint structure, C2ST.
    main = compare(real_ts, synth_ts, flows["real"], flows["synthetic"], rng, seed)
    cal_rr = compare(real_b, real_a, flows["b"], flows["a"], rng, seed)
    cal_cm = compare(real_b, marginal, flows["b"], flows["marginal"], rng, seed)
    steps.done("fidelity")

    # 4. Utility, all tested on the held-out real half B.
    util = {name: _utility(t, flows[key], real_b, flows["b"], rng, seed)
            for name, t, key in (("trtr", real_a, "a"), ("tstr", synth_ts, "synthetic"),
                                 ("column_marginal", marginal, "marginal"))}
    augment = U.augmentation(real_a, synth_ts, real_b, rng, seed)
    steps.done("utility")

    # 5. Memorisation: against the training set, with the real set as the held-out one; with no
    # training set, against the whole real set, the held-out baseline being one half of the real
    # flows against the other.
    if train_ts is not None:
        audit = M.audit(synth_ts, train_ts, real_ts, rng)
    else:
        audit = M.audit(synth_ts, real_ts, flow_b, rng, holdout_reference=flow_a)
    audit_rr = {"units": {u: {"synthetic": row["holdout"]} if "holdout" in row else {}
                          for u, row in audit["units"].items()}}
    audit_marginal = M.audit(marginal, real_a, None, rng)
    steps.done("memorisation")

    compliance = _compliance(synth_ts, real_ts) if compliance else {"skipped": "not requested"}
    steps.done("compliance")

    dcr, copy = _memo_keys(audit)
    report = {
        "version": REPORT_VERSION,
        "seed": seed,
        "inputs": {name: None if t is None else {"path": t.path, "kind": t.kind, "packets": len(t),
                                                  "classes": t.class_counts(),
                                                  "decapsulated": t.decapsulated, "left_out": t.skipped}
                   for name, t in (("real", real_ts), ("synthetic", synth_ts), ("training", train_ts))},
        "layout": {"name": layout.name, "columns": layout.width},
        "classes": classes,
        **_keyed(main),
        "tstr": _headline(util["tstr"]),
        "trtr": _headline(util["trtr"]),
        "dcr": dcr,
        "copy_rate": copy,
        "memorisation_reference": "training set" if train_ts is not None else
        "real set (no --training); held-out baseline: half of the real flows against the other half",
        "fidelity": _detail(main),
        "utility": {**util, "augmentation": augment},
        "calibration": {
            "real_vs_real": {**_keyed(cal_rr), "tstr": _headline(util["trtr"]),
                             **dict(zip(("dcr", "copy_rate"), _memo_keys(audit_rr))),
                             "fidelity": _detail(cal_rr)},
            "column_marginal": {**_keyed(cal_cm), "tstr": _headline(util["column_marginal"]),
                                **dict(zip(("dcr", "copy_rate"), _memo_keys(audit_marginal))),
                                "fidelity": _detail(cal_cm)},
        },
        "compliance": compliance,
        "timing_s": steps.timing,
    }
    # 6. Report files.
    from netdiff.eval.report import write_report

    extras = {"main": main, "cal_rr": cal_rr, "cal_cm": cal_cm, "audit": audit, "flows": flows,
              "sets": {"real": real_ts, "synthetic": synth_ts}, "util": util}
    write_report(out, report, extras, figures=figures)
    steps.done("report")
    report["timing_s"] = steps.timing
    steps.close()
    from netdiff.eval.report import write_json

    write_json(out / "report.json", report)
    return report


def _detail(result: dict) -> dict:
    """The per-field detail of a comparison, without the arrays kept for plots."""
    fid = result["fidelity"]
    keep = ("worst_columns", "field_jsd", "decoded_fields", "inter_arrival", "flows")
    return {"overall": {k: fid[k] for k in keep},
            "per_class": {c: {k: v["fidelity"][k] for k in ("decoded_fields", "inter_arrival", "flows")}
                          for c, v in result["per_class"].items()}}


def _fmt(x, nd=3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1e}" if 0 < abs(x) < 10 ** -nd else f"{x:.{nd}f}"


def summary_line(report: dict) -> str:
    """One paragraph for a terminal: the headline numbers next to their calibration."""
    cal = report["calibration"]
    rr, cm = cal["real_vs_real"], cal["column_marginal"]
    copy = report["copy_rate"]
    unit = next((u for u in ("images", "flows", "packets") if copy.get(u, {}).get("synthetic")), None)
    cr = copy[unit]["synthetic"]["near_copy_rate"] if unit else None
    ho = copy[unit].get("holdout", {}).get("near_copy_rate") if unit else None
    return (f"{report['inputs']['synthetic']['packets']} synthetic vs {report['inputs']['real']['packets']} "
            f"real packets, {len(report['classes'])} classes: "
            f"JSD {_fmt(report['jsd']['overall'], 4)} (real/real {_fmt(rr['jsd']['overall'], 4)}, "
            f"marginal sampler {_fmt(cm['jsd']['overall'], 4)}); "
            f"header-field JSD {_fmt(report['decoded_field_jsd']['overall'])} "
            f"(real/real {_fmt(rr['decoded_field_jsd']['overall'])}, "
            f"sampler {_fmt(cm['decoded_field_jsd']['overall'])}); "
            f"C2ST AUC {_fmt(report['c2st_auc']['overall'], 2)} (real/real {_fmt(rr['c2st_auc']['overall'], 2)}, "
            f"sampler {_fmt(cm['c2st_auc']['overall'], 2)}); "
            f"field MI distance {_fmt(report['mutual_information_distance']['overall'])} "
            f"(real/real {_fmt(rr['mutual_information_distance']['overall'])}, "
            f"sampler {_fmt(cm['mutual_information_distance']['overall'])}); "
            f"TSTR macro-F1 {_fmt(report['tstr']['overall'], 2)} vs TRTR {_fmt(report['trtr']['overall'], 2)}; "
            f"near-copy rate ({unit or 'n/a'}) {_fmt(cr, 2)} (held-out real {_fmt(ho, 2)}).")
