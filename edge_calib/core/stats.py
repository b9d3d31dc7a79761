"""Latency statistics in the manner of trtexec / jetson-inference (numpy only)."""

from __future__ import annotations

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summarize(values_ms) -> dict:
    """min / max / mean / median / p90 / p95 / p99 (ms) of a list of latencies."""
    v = np.asarray(values_ms, np.float64)
    if v.size == 0:
        return {"count": 0}
    out = {"count": int(v.size), "min": float(v.min()), "max": float(v.max()),
           "mean": float(v.mean()), "median": float(np.median(v))}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(v, p))
    return out


def table(rows: dict[str, dict], columns=("mean", "p50", "p95", "p99")) -> str:
    """A fixed-width text table: one row per stage, latencies in ms."""
    header = f"{'':>12} " + " ".join(f"{c:>9}" for c in columns)
    lines = [header]
    for name, s in rows.items():
        if not s.get("count"):
            continue
        values = [s["median"] if c == "p50" else s[c] for c in columns]
        lines.append(f"{name:>12} " + " ".join(f"{v:9.3f}" for v in values))
    return "\n".join(lines)
