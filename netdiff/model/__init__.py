"""The diffusion layer: lossless ternary latent, compact base, LoRA, ControlNet, generation.

Submodules import torch; this package file does not, so ``import netdiff.model.config`` and the
CLI's ``--help`` stay light. Roles: config (typed YAML), data (PNG images + captions), ternary
(the lossless autoencoder), tokenizer, build (networks and schedulers), store (model folders),
controls (mask templates, canny), training (shared loop pieces), train_base / train_lora /
train_controlnet (one script each), generate (the pipeline and the generate function).
"""
