"""Deterministic cluster simulator: real replicas, simulated network, disks and clocks.

``python -m sim --seeds N`` runs seeds 1..N; ``python -m sim --seed S --verbose``
replays one. Every failure prints the command that replays it.
"""
