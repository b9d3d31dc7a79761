"""Torch eager configurations (CUDA when present, else CPU) from the checkpoints a bundle was
built from. Optional: only when torch is installed and the checkpoint paths still resolve."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .latency import Config


def torch_configs(bundle, domains: list[str], x: np.ndarray):
    """(configs, device name) or (None, reason)."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed"
    from ..models.store import load_calibrator, load_classifier

    clf_path = bundle.manifest["classifier"].get("checkpoint")
    if not clf_path or not Path(clf_path).is_file():
        return None, f"classifier checkpoint {clf_path} not found"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clf = load_classifier(clf_path).module.to(device).eval()
    xt = torch.from_numpy(x).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn):
        def run():
            with torch.no_grad():
                out = fn()
            sync()
            return out
        return run

    configs = [Config("classifier", "classifier", None, timed(lambda: clf(xt)))]
    for domain in domains:
        entry = bundle.domain(domain)["calibrator"]
        if entry is None or not Path(entry.get("checkpoint", "")).is_file():
            continue
        cal = load_calibrator(entry["checkpoint"]).module.to(device).eval()
        configs.append(Config(f"calibrator[{domain}]", "calibrator", domain,
                              timed(lambda cal=cal: cal(xt))))
        configs.append(Config(f"calibrator+classifier[{domain}]", "chain", domain,
                              timed(lambda cal=cal: clf(cal(xt)))))
    name = (torch.cuda.get_device_name(0) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} threads")
    return configs, f"torch {torch.__version__} eager on {name}"
