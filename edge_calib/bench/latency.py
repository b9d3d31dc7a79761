"""Interleaved latency measurement of the pieces of a bundle, trtexec-style, through the
engine interface only (any backend: the runner interface of ``engines``).

Configurations: the classifier alone (``infer(None, x)``), each calibrator alone
(``calibrate``), calibrator then classifier (the separate engines' ``infer``, as
``run --separate`` runs them) and the fused graph (the fused engines' ``infer``). Each iteration
runs every configuration once, in an order that rotates, so machine noise hits all of them
alike; the calibrator's overhead is the chain minus the classifier alone, per iteration, then
the median.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.stats import summarize


@dataclass
class Config:
    name: str
    kind: str  # classifier | calibrator | chain | fused
    domain: str | None
    run: Callable[[], object]


def engine_configs(fused, separate, bundle, x: np.ndarray) -> list[Config]:
    """Configurations for input ``x`` over two ``Engines`` of one backend: ``fused`` (opened
    with fused graphs) and ``separate`` (calibrator and classifier in turn)."""
    configs = [Config("classifier", "classifier", None, lambda: fused.infer(None, x))]
    for domain in bundle.domains:
        if bundle.calibrator(domain) is None:
            continue
        if separate.calibrate(domain, x) is not None:
            configs.append(Config(f"calibrator[{domain}]", "calibrator", domain,
                                  lambda d=domain: separate.calibrate(d, x)))
        configs.append(Config(f"calibrator+classifier[{domain}]", "chain", domain,
                              lambda d=domain: separate.infer(d, x)))
        if fused.runs_fused(domain):
            configs.append(Config(f"fused[{domain}]", "fused", domain,
                                  lambda d=domain: fused.infer(d, x)))
    return configs


def measure(configs: list[Config], iterations: int = 200, warmup: int = 20,
            duration: float | None = None) -> dict:
    """Run every configuration ``warmup`` times, then ``iterations`` interleaved rounds (or
    rounds until ``duration`` seconds). Returns per-configuration latency samples (ms)."""
    for config in configs:
        for _ in range(warmup):
            config.run()
    samples = {c.name: [] for c in configs}
    started, rounds = time.perf_counter(), 0
    while (rounds < iterations) if duration is None else (time.perf_counter() - started < duration):
        shift = rounds % len(configs)
        for config in configs[shift:] + configs[:shift]:
            t0 = time.perf_counter()
            config.run()
            samples[config.name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return samples


def latency_table(configs: list[Config], samples: dict, batch: int) -> dict:
    """Per configuration: trtexec-style statistics and throughput (images/s at the median);
    per domain: overhead of the calibrator over the classifier alone, ms and percent."""
    out = {"batch": batch, "configs": {}, "overhead": {}}
    for config in configs:
        s = summarize(samples[config.name])
        s["throughput_ips"] = batch * 1000.0 / s["median"] if s.get("median") else None
        out["configs"][config.name] = {"kind": config.kind, "domain": config.domain, **s}
    base = np.asarray(samples["classifier"])
    for config in configs:
        if config.kind not in ("chain", "fused"):
            continue
        paired = np.asarray(samples[config.name]) - base[: len(samples[config.name])]
        median_base = float(np.median(base))
        entry = out["overhead"].setdefault(config.domain, {})
        entry[config.kind] = {"ms": float(np.median(paired)),
                              "pct": float(100.0 * np.median(paired) / median_base)}
    return out
