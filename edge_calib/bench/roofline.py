"""Jetson projections from MACs and bytes: a roofline *estimate*, not a measurement.

    t >= max(2 * MACs / peak_ops, bytes_moved / bandwidth)

bytes_moved = weights (at their stored precision) + activations written and read once
(float32 here; a lower bound on traffic). Real kernels add launch overheads that dominate a
shallow calibrator on these boards, so the bound is optimistic by design.
"""

from __future__ import annotations

# Peaks from DESIGN.md section 5 (vendor figures). Sparse INT8 TOPS are halved for dense.
DEVICES = {
    "Jetson Nano": {"ops_per_s": 472e9, "precision": "FP16", "bandwidth": 25.6e9},
    "Jetson Xavier NX": {"ops_per_s": 21e12, "precision": "INT8", "bandwidth": 51.2e9},
    "Jetson Orin Nano 8GB": {"ops_per_s": 40e12 / 2, "precision": "INT8 dense", "bandwidth": 68e9},
    "Jetson AGX Orin": {"ops_per_s": 275e12 / 2, "precision": "INT8 dense", "bandwidth": 204.8e9},
}


def project(costs: dict[str, dict]) -> dict:
    """{device: {part: {compute_us, memory_us, bound_us, bound_by}}} for each part's costs."""
    out = {}
    for device, peak in DEVICES.items():
        rows = {}
        for part, c in costs.items():
            compute = 2 * c["macs"] / peak["ops_per_s"]
            moved = c["weight_bytes"] + 2 * c["activation_bytes_total"]
            memory = moved / peak["bandwidth"]
            rows[part] = {"compute_us": compute * 1e6, "memory_us": memory * 1e6,
                          "bound_us": max(compute, memory) * 1e6,
                          "bound_by": "compute" if compute >= memory else "memory"}
        out[device] = {"peak": peak, "parts": rows}
    return out
