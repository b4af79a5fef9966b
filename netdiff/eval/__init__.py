"""Evaluation of synthetic traffic: fidelity, calibration, utility, joint structure, privacy.

``evaluate(real, synthetic, out, training=None, seed=0) -> dict`` runs everything and writes
``out/report.json`` and ``out/report.md``; ``summary_line(report)`` is its one-paragraph summary.
"""
from __future__ import annotations


def evaluate(real, synthetic, out, training=None, seed: int = 0, **kwargs) -> dict:
    from netdiff.eval.runner import evaluate as _evaluate

    return _evaluate(real, synthetic, out, training=training, seed=seed, **kwargs)


def summary_line(report: dict) -> str:
    from netdiff.eval.runner import summary_line as _summary_line

    return _summary_line(report)


__all__ = ["evaluate", "summary_line"]
