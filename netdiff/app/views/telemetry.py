"""Telemetry: upload a CSV/Parquet table, choose the column roles, train DoppelGANger / TimeGAN /
PAR, and compare real and synthetic series, distributions, metrics and downstream tasks."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from netdiff.app import tasks, ui
from netdiff.app.ui import st
from netdiff.app.workspace import TELEMETRY, safe_name, upload_limit_mb
from netdiff.errors import NetdiffError

TITLE = "Telemetry"
DATA, RUNS = f"{TELEMETRY}/data", f"{TELEMETRY}/runs"
MODELS = ["doppelganger", "timegan", "par"]     # par needs netdiff[sdv]
RUN_FILE = "run.json"                           # a run's data file and column roles (tasks.telemetry)


def read_table(path) -> pd.DataFrame:
    """A CSV or Parquet file as a frame; anything else is a one-line error."""
    try:
        if str(path).endswith(".parquet"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError, ImportError) as e:
        raise NetdiffError(f"{path.name}: not a readable CSV or Parquet table ({str(e).splitlines()[0]})") from None


def histogram(real: np.ndarray, synth: np.ndarray, bins: int = 30) -> pd.DataFrame:
    """Share of values per bin on one shared grid, real beside synthetic."""
    both = np.concatenate([real, synth])
    edges = np.histogram_bin_edges(both[np.isfinite(both)], bins=bins)
    share = {name: np.histogram(x[np.isfinite(x)], edges)[0] / max(1, np.isfinite(x).sum())
             for name, x in (("real", real), ("synthetic", synth))}
    return pd.DataFrame(share, index=np.round((edges[:-1] + edges[1:]) / 2, 4))


def _upload(ws) -> None:
    up = st.file_uploader(f"CSV or Parquet (at most {upload_limit_mb()} MB)", type=["csv", "parquet"], key="tel-upload")
    if up is not None and st.button("Save table"):
        with ui.one_line_errors():
            path = ws.save_upload(DATA, up.name, up.getvalue())
            try:
                read_table(path)
            except NetdiffError:
                path.unlink()
                raise
            st.success(f"saved {ws.rel(path)}")


def _train(ws) -> None:
    files = sorted(ws.rel(p) for p in ws.path(DATA).glob("*") if p.suffix in (".csv", ".parquet")) \
        if ws.path(DATA).is_dir() else []
    data = ui.folder_picker(ws, "table", files, "tel-data")
    if not data:
        return
    with ui.one_line_errors():
        table = read_table(ws.path(data))
        cols, numeric = list(table.columns), list(table.select_dtypes("number").columns)
        c1, c2 = st.columns(2)
        key = c1.multiselect("sequence key", cols, default=cols[:1], key="tel-key")
        times = ["(none)"] + cols
        guess = next((i for i, c in enumerate(times) if c.lower() in ("ts", "date") or "time" in c.lower()), 0)
        time_col = c2.selectbox("time column", times, index=guess, key="tel-time")
        features = st.multiselect("features", cols, default=[c for c in numeric if c not in key][-2:], key="tel-features")
        attributes = st.multiselect("attributes (fixed per sequence)", [c for c in cols if c not in features],
                                    key="tel-attributes")
        categorical = st.multiselect("categorical columns", attributes + features, key="tel-categorical")
        c1, c2, c3, c4 = st.columns(4)
        model = c1.selectbox("model", MODELS, key="tel-model")
        config = c2.selectbox("config", tasks.config_names("telemetry"),
                              index=tasks.config_names("telemetry").index("tiny"), key="tel-config")
        epochs = c3.number_input("epochs (0: the config's)", 0, 100_000, 0, key="tel-epochs")
        seed = c4.number_input("seed", 0, 2**31 - 1, 0, key="tel-seed")
        name = st.text_input("run name", f"{model}-{ws.path(data).stem}", key="tel-run")
        if st.button("Train and evaluate"):
            roles = {"sequence_key": key, "time_column": None if time_col == "(none)" else time_col,
                     "features": features, "attributes": attributes, "categorical": categorical}
            ui.start_job(ws, "telemetry", {"data": data, "roles": roles, "model": model, "config": config,
                                           "epochs": int(epochs) or None, "seed": int(seed),
                                           "output": f"{RUNS}/{safe_name(name, 'run name')}"})
    ui.job_panel(ws, "telemetry")


def _traces(trace: dict, feature: str) -> None:
    """The downstream tasks on the longest held-out real sequence: actual vs each forecaster's
    one-step predictions and their residuals; the series with spikes injected and the steps
    each detector flagged."""
    f = trace["feature_names"].index(feature)
    step = pd.Index(trace["step"], name="step")
    actual = pd.Series(trace["actual"][f], index=step)
    pred = {f"trained on {k}": pd.Series(v[f], index=step) for k, v in trace["predicted"].items()}
    st.markdown(f"**forecast of {feature}**, one step ahead on a held-out real sequence")
    st.line_chart(pd.DataFrame({"actual": actual, **pred}))
    st.markdown("**residuals** (predicted - actual)")
    st.line_chart(pd.DataFrame({k: v - actual for k, v in pred.items()}))
    rows = [{"step": s, "value": v, "mark": "series"} for s, v in zip(trace["anomaly_step"], trace["anomaly_series"][f])]
    value = dict(zip(trace["anomaly_step"], trace["anomaly_series"][f]))
    rows += [{"step": s, "value": value[s], "mark": "injected spike"} for s in trace["injected"]]
    rows += [{"step": s, "value": value[s], "mark": f"flagged (trained on {k})"}
             for k, steps in trace["flagged"].items() for s in steps]
    st.markdown(f"**anomaly detector on {feature}**: spikes injected, the windows each detector "
                "flagged (at the window's last step)")
    st.vega_lite_chart(pd.DataFrame(rows), {
        "layer": [{"mark": "line", "transform": [{"filter": "datum.mark == 'series'"}],
                   "encoding": {"x": {"field": "step", "type": "quantitative"},
                                "y": {"field": "value", "type": "quantitative"}}},
                  {"mark": {"type": "point", "filled": True, "size": 60},
                   "transform": [{"filter": "datum.mark != 'series'"}],
                   "encoding": {"x": {"field": "step", "type": "quantitative"},
                                "y": {"field": "value", "type": "quantitative"},
                                "color": {"field": "mark", "type": "nominal"},
                                "shape": {"field": "mark", "type": "nominal"}}}]},
        width="stretch")


def _results(ws) -> None:
    runs = [r for r in ws.folders(RUNS) if ws.path(r, "metrics.json").is_file()]
    if not runs:
        return
    st.divider()
    run = st.selectbox("run", runs, index=len(runs) - 1, key="tel-result")
    info = json.loads(ws.path(run, RUN_FILE).read_text())
    metrics = json.loads(ws.path(run, "metrics.json").read_text())
    roles = info["roles"]
    real = read_table(ws.path(info["data"]))
    synth = read_table(ws.path(run, "synthetic.csv"))
    feature = st.selectbox("feature", metrics["features"], key="tel-feature")
    # one real and one synthetic sequence, step by step (time order within the sequence)
    rkey, skey = roles["sequence_key"], info["synthetic_key"]
    order = [roles["time_column"]] if roles.get("time_column") else []
    real_ids = real[rkey].drop_duplicates().astype(str).agg("/".join, axis=1).tolist()
    which = st.select_slider("sequence", options=list(range(min(len(real_ids), synth[skey].nunique()))),
                             key="tel-seq") if len(real_ids) > 1 else 0
    r = real[real[rkey].astype(str).agg("/".join, axis=1) == real_ids[which]]
    s = synth[synth[skey] == synth[skey].drop_duplicates().iloc[which]]
    r, s = (r.sort_values(order) if order else r), (s.sort_values(order) if order else s)
    st.markdown(f"**{feature}**: real sequence {real_ids[which]} and synthetic sequence {which}")
    st.line_chart(pd.DataFrame({"real": pd.Series(r[feature].to_numpy()),
                                "synthetic": pd.Series(s[feature].to_numpy())}))
    st.markdown(f"**distribution of {feature}** (share of values per bin)")
    st.bar_chart(histogram(real[feature].to_numpy(float), synth[feature].to_numpy(float)))
    st.markdown("**metrics**")
    st.dataframe([{"metric": k, "value": metrics[k]} for k in ("m", "autocorrelation_mse", "cross_correlation",
                  "discriminative_score", "predictive_score", "predictive_score_real") if metrics.get(k) is not None],
                 hide_index=True)
    note = (metrics.get("discriminative") or {}).get("note")
    if metrics.get("discriminative_score") is None and note:
        st.caption(f"discriminative score: {note}")     # too few sequences: no score, not 0.5
    down = metrics.get("downstream")
    if down:
        st.markdown(f"**forecaster** (LSTM, window {down['window']}): trained on real or synthetic, "
                    "tested on held-out real sequences")
        st.dataframe([{"trained on": k, **(v or {"note": "sequences too short for the window"})}
                      for k, v in down["forecast"].items()], hide_index=True)
        st.markdown(f"**anomaly detector** (LSTM autoencoder + DBSCAN; {down['anomaly'].get('injected')} "
                    "spikes injected into the real test windows)")
        st.dataframe([{"trained on": k, **(v or {"note": "sequences too short for the window"})}
                      for k, v in down["anomaly"].items() if k != "injected"], hide_index=True)
        if down.get("trace") and feature in down["trace"]["feature_names"]:
            _traces(down["trace"], feature)
    for fig in metrics.get("plots", []):
        st.image(str(ws.path(run, fig)), caption=fig)


def render() -> None:
    ws = ui.workspace()
    st.title(TITLE)
    _upload(ws)
    _train(ws)
    with ui.one_line_errors():
        _results(ws)
