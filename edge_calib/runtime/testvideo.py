"""Videos whose domain changes mid-stream, made of real dataset images, with ground truth.

Used by the demo, the benchmarks and the tests: each segment is a run of frames from one
domain's images (e.g. MNIST, then USPS; CamVid dusk, then day), resized to ``size`` (an int for
square frames, (width, height), or None to keep the images' own size) and written with OpenCV.
A JSON sidecar gives, per frame, the domain and the true label (for classification).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import EdgeCalibError
from ..core.fileio import temporary_beside, write_json_atomic


def write_domain_video(path: str | Path, segments: list[tuple[str, np.ndarray, np.ndarray]],
                       size=96, fps: float = 30.0) -> dict:
    """segments: (domain, uint8 images (N,H,W[,C]), labels (N,) or None) in playing order."""
    path = Path(path)
    first = segments[0][1][0]
    size = (first.shape[1], first.shape[0]) if size is None else \
        (size, size) if isinstance(size, int) else tuple(size)
    fourcc = {".avi": "MJPG", ".mp4": "mp4v"}.get(path.suffix.lower())
    if fourcc is None:
        raise EdgeCalibError(f"{path}: write .avi or .mp4")
    truth = []
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path, suffix=f".partial{path.suffix}")  # renamed when complete
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise EdgeCalibError(f"OpenCV cannot write {path.suffix} video here")
    for domain, images, labels in segments:
        for i, img in enumerate(images):
            img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
            frame = img if img.shape[1::-1] == size else \
                cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else \
                cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            writer.write(frame)
            entry = {"index": len(truth), "domain": domain}
            if labels is not None and labels.ndim == 1:
                entry["label"] = int(labels[i])
            truth.append(entry)
    writer.release()
    os.replace(tmp, path)
    sidecar = {"video": path.name, "fps": fps, "size": list(size), "frames": truth,
               "segments": [{"domain": d, "frames": len(im)} for d, im, _ in segments]}
    write_json_atomic(path.with_suffix(".truth.json"), sidecar)
    return sidecar


def alternating_segments(sources: dict, frames_per_segment: int, segments: int) -> list:
    """Segments for ``write_domain_video``: the domains of ``sources`` ({domain: ImageSet of
    labelled test images}) in turn, each segment the next unused run of that domain's images
    (wrapping around)."""
    names, used, out = list(sources), {d: 0 for d in sources}, []
    for k in range(segments):
        domain = names[k % len(names)]
        ds = sources[domain]
        start = used[domain] % max(1, len(ds) - frames_per_segment)
        labels = None if ds.labels is None else ds.labels[start:start + frames_per_segment]
        out.append((domain, ds.images[start:start + frames_per_segment], labels))
        used[domain] += frames_per_segment
    return out


def score_predictions(predictions_path: str | Path, truth: dict) -> dict:
    """Per true domain: classification accuracy (when the video has labels), and how often the
    running domain (the calibrator used) and the auto-domain vote named the true domain."""
    frames = truth["frames"]
    rows = [json.loads(line) for line in Path(predictions_path).read_text().splitlines()]
    per = {}
    for row in rows:
        t = frames[row["index"]]
        d = per.setdefault(t["domain"], {"frames": 0, "correct": 0, "calibrator_matches": 0,
                                          "auto_votes_correct": 0, "auto_votes": 0})
        d["frames"] += 1
        d["correct"] += "label" in t and row.get("label") == t["label"]
        d["calibrator_matches"] += row["domain"] == t["domain"]
        if "auto" in row:
            d["auto_votes"] += 1
            d["auto_votes_correct"] += row["auto"]["predicted"] == t["domain"]
    out = {}
    for domain, d in per.items():
        out[domain] = {"frames": d["frames"],
                       "running_domain_correct_pct": round(100 * d["calibrator_matches"] / d["frames"], 2)}
        if any("label" in f for f in frames):
            out[domain]["accuracy"] = round(100 * d["correct"] / d["frames"], 2)
        if d["auto_votes"]:
            out[domain]["auto_frame_accuracy"] = round(100 * d["auto_votes_correct"] / d["auto_votes"], 2)
    return out
