"""Reporting phase: metrics and predictions in, the Markdown report, figures and comparisons out (no torch)."""
