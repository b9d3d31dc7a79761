"""Latency, compute and overhead reports for a deploy bundle (device side, no torch needed)."""
