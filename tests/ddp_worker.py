"""Run by test_distributed.py under torchrun (2 processes, gloo): the distributed helpers and the
single-writer rule on a real process group. Each rank writes what it saw to OUT/rankR.json."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import random_classifier, random_domain  # noqa: E402

from edge_calib.train.calibrate import CalibratorConfig, CalibratorTrainer  # noqa: E402
from edge_calib.train.distributed import Distributed  # noqa: E402


def main(out: Path):
    dist, device = Distributed.from_environment(torch.device("cpu"))
    seen = {"rank": dist.rank, "world_size": dist.world_size, "backend": dist.backend}
    seen["shard"] = dist.shard(np.arange(8)).tolist()
    seen["from_main"] = dist.from_main(lambda: f"computed on rank {dist.rank}")
    bad = {"loss": math.nan if dist.rank == 1 else 1.0, "other": float(dist.rank)}
    seen["average"] = {k: (None if math.isnan(v) else v) for k, v in dist.average(bad).items()}
    try:
        dist.per_rank(63)
    except Exception as exc:
        seen["per_rank_error"] = str(exc)
    # one epoch of a real trainer, each rank given its own folder: only rank 0's gets files
    folder = out / f"rank{dist.rank}"
    folder.mkdir(parents=True)
    cfg = CalibratorConfig(epochs=1, batch_size=16, arch="thumbnail", lr=1e-3)
    trainer = CalibratorTrainer(random_classifier(), random_domain(64, seed=1),
                                random_domain(64, seed=2, bright=40, labelled=False), cfg,
                                device, folder / "x.state.pt", folder / "x.metrics.jsonl",
                                dist=dist)
    trainer.run(progress=False)
    seen["history_world_size"] = [row["world_size"] for row in trainer.history]
    seen["weights"] = [float(p.double().sum()) for p in trainer.G.parameters()]
    dist.close()
    (out / f"rank{seen['rank']}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
