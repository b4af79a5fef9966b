"""Synthetic telemetry: multi-sequence time series with per-sequence attributes.

Modules, by role:
  data.py         load CSV / Parquet / zip of CSVs (long or wide form) into padded arrays
  columns.py      column roles against a file's header: names with spaces, inferred features,
                  auto-detected time formats (a plain CSV needs no YAML)
  scaling.py      per-column min-max / one-hot encoding kept with the model
  doppelganger.py DoppelGANger (attribute + min/max + LSTM feature generators, WGAN-GP)
  timegan.py      TimeGAN (embedder, recovery, generator, supervisor, discriminator)
  fastgru.py      a GRU layer with hand-written backpropagation through time (TimeGAN on CPU)
  baselines.py    AR(p) and bootstrap baselines, SDV PAR wrapper (optional extra)
  sdv_tabular.py  SDV TVAE and CTGAN per-row baselines (optional extra)
  metrics.py      M, autocorrelation MSE, W1, cross-correlation, discriminative/predictive scores
  downstream.py   train-on-synthetic / test-on-real forecasting and anomaly detection
  plots.py        real vs synthetic figures
  modelio.py      save / load models as safetensors + JSON
  settings.py     YAML configs (sections data, doppelganger, timegan, ...) and column roles
  common.py       shared model pieces (MLPs, output activations, seeding, time stamps)
  api.py          train / generate / evaluate as functions (the CLI calls these)

Importing this package does not import torch.
"""
