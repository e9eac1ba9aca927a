"""Evaluation: task metrics, fidelity to the teacher, cost."""
