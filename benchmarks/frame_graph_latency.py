#!/usr/bin/env python3
"""What moving pre/post-processing into the graph costs or saves on the device path: paired,
interleaved, batch 1, one ONNX Runtime thread. The runtime's former path (numpy normalise ->
the float fused graph -> numpy ArgMax) against the frame graph (uint8 in, class map out), on a
real frame of the bundle's dusk domain; the two must give the same class map.

    python benchmarks/frame_graph_latency.py --deploy runs/camvid_full/deploy --domain dusk \
        --dataset camvid:dusk --rounds 200

Writes benchmarks/results/camvid/frame_graph_latency.json (command, commit, machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_calib.bench.latency import Config, measure  # noqa: E402
from edge_calib.core.fileio import write_json_atomic  # noqa: E402
from edge_calib.core.provenance import capture  # noqa: E402
from edge_calib.data import load_dataset  # noqa: E402
from edge_calib.deploy.bundle import open_bundle  # noqa: E402
from edge_calib.engines import open_engines  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/camvid/frame_graph_latency.json"))
    args = parser.parse_args()
    bundle = open_bundle(args.deploy)
    u8 = bundle.spec.resize_uint8(load_dataset(args.dataset, "test", args.data_root).images[:1])
    with open_engines(bundle, threads=1, frames=True) as engines:
        def former():
            logits, _ = engines.infer(args.domain, bundle.spec.normalize(u8))
            return logits.argmax(axis=1)

        def frame():
            return engines.infer_frame(args.domain, u8)[0]["classes"]

        if not np.array_equal(former(), frame()):
            sys.exit("the two paths give different class maps")
        configs = [Config("float graph + numpy pre/post", "chain", args.domain, former),
                   Config("frame graph", "fused", args.domain, frame)]
        samples = measure(configs, iterations=args.rounds, warmup=20)
    a, b = (np.asarray(samples[c.name]) for c in configs)
    d = b - a
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "environment": capture(1), "rounds": len(a),
              "former_median_ms": float(np.median(a)), "frame_graph_median_ms": float(np.median(b)),
              "paired_difference_median_ms": float(np.median(d)),
              "paired_difference_iqr_ms": [float(np.percentile(d, 25)), float(np.percentile(d, 75))]}
    write_json_atomic(Path(args.out), result)
    print(result["former_median_ms"], result["frame_graph_median_ms"],
          result["paired_difference_median_ms"], result["paired_difference_iqr_ms"])


if __name__ == "__main__":
    main()
