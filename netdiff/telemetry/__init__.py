"""Synthetic telemetry: multi-sequence time series with per-sequence attributes.

Modules, by role:
  data.py         load CSV / Parquet / zip of CSVs (long or wide form) into padded arrays
  scaling.py      per-column min-max / one-hot encoding kept with the model
  doppelganger.py DoppelGANger (attribute + min/max + LSTM feature generators, WGAN-GP)
  timegan.py      TimeGAN (embedder, recovery, generator, supervisor, discriminator)
  baselines.py    AR(p) and bootstrap baselines, SDV PAR wrapper (optional extra)
  metrics.py      M, autocorrelation MSE, W1, cross-correlation, discriminative/predictive scores
  downstream.py   train-on-synthetic / test-on-real forecasting and anomaly detection
  plots.py        real vs synthetic figures
  modelio.py      save / load models as safetensors + JSON
  settings.py     YAML configs (sections data, doppelganger, timegan, ...) and column roles
  common.py       shared model pieces (MLPs, output activations, seeding, time stamps)
  api.py          train / generate / evaluate as functions (the CLI calls these)

Importing this package does not import torch.
"""
