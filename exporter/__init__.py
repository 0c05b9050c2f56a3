"""Exporter: zero-aware training, quantisation and verified bundle building (needs the `train` extra)."""
