"""Experiments: paper presets, sweeps, executors and the results store."""
