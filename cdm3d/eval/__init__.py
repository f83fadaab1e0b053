"""Evaluation: CLIP zero-shot metrics, point-cloud metrics, fidelity classifiers."""
