"""Report machinery: statistics against numpy, MACs against hand counts, report files."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from edge_calib.bench.graphs import graph_costs
from edge_calib.bench.latency import Config, latency_table, measure
from edge_calib.bench.roofline import project
from edge_calib.export.onnx_graphs import _torch_to_onnx
from edge_calib.core.stats import summarize


def test_summary_statistics_match_numpy():
    v = np.random.default_rng(0).gamma(2.0, 1.5, 1001)
    s = summarize(v)
    assert s["count"] == 1001 and s["min"] == v.min() and s["max"] == v.max()
    assert s["mean"] == pytest.approx(v.mean()) and s["median"] == pytest.approx(np.median(v))
    for p in (50, 90, 95, 99):
        assert s[f"p{p}"] == pytest.approx(np.percentile(v, p))
    assert summarize([]) == {"count": 0}


class Small(nn.Module):
    """conv 3->8 3x3 pad 1 on 8x8, stride-2 conv 8->4 3x3, transposed conv 4->2 2x2/2, linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, stride=2, padding=1, groups=4)
        self.c = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.d = nn.Linear(2 * 8 * 8, 5)

    def forward(self, x):
        return self.d(torch.flatten(self.c(torch.relu(self.b(torch.relu(self.a(x))))), 1))


def test_macs_and_params_by_hand():
    model = _torch_to_onnx(Small(), (3, 8, 8), "logits")
    costs = graph_costs(model)
    a = 8 * 8 * 8 * (3 * 3 * 3)        # output elements x C_in x kH x kW
    b = 4 * 4 * 4 * (2 * 3 * 3)        # groups=4: each output sees 8/4 = 2 input channels
    c = (4 * 4 * 4) * 2 * (2 * 2)      # input elements x C_out x kH x kW
    d = 5 * 128                        # outputs x K
    assert costs["macs"] == a + b + c + d
    assert costs["macs_by_op"] == {"Conv": a + b, "ConvTranspose": c, "Gemm": d}
    assert costs["params"] == sum(p.numel() for p in Small().parameters())
    assert costs["weight_bytes"] == 4 * costs["params"]
    assert costs["activation_bytes_peak"] >= 4 * 8 * 8 * 8  # the largest live tensor


def test_interleaved_measurement_and_overhead():
    calls = []
    configs = [Config("classifier", "classifier", None, lambda: calls.append("c")),
               Config("calibrator+classifier[x]", "chain", "x", lambda: calls.append("p"))]
    samples = measure(configs, iterations=10, warmup=2)
    assert calls[:4] == ["c", "c", "p", "p"]  # warm-up per configuration
    assert calls[4:8] == ["c", "p", "p", "c"]  # rounds rotate the order
    assert all(len(v) == 10 for v in samples.values())
    samples = {"classifier": [1.0, 2.0, 3.0], "calibrator+classifier[x]": [1.5, 2.5, 3.4]}
    table = latency_table(configs, samples, batch=4)
    assert table["overhead"]["x"]["chain"]["ms"] == pytest.approx(0.5)
    assert table["overhead"]["x"]["chain"]["pct"] == pytest.approx(25.0)
    assert table["configs"]["classifier"]["throughput_ips"] == pytest.approx(2000.0)


def test_roofline_bounds():
    costs = {"net": {"macs": 10**9, "weight_bytes": 10**6, "activation_bytes_total": 0}}
    p = project(costs)["Jetson Nano"]["parts"]["net"]
    assert p["compute_us"] == pytest.approx(2e9 / 472e9 * 1e6)
    assert p["bound_by"] == "compute"


@pytest.mark.slow
def test_bench_report_files(bundle_dir, shared_data, tmp_path):
    from click.testing import CliRunner

    from edge_calib.cli import main

    out = tmp_path / "report"
    r = CliRunner().invoke(main, ["bench", "--deploy", str(bundle_dir), "--report", str(out),
                                  "--iterations", "5", "--warmup", "1", "--batch", "1",
                                  "--batch", "4", "--stream-frames", "40", "--data-root",
                                  str(shared_data)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    from edge_calib.bench.report import BenchReport

    assert BenchReport(**report).to_dict() == report  # one typed record, keyed as written
    ort = report["latency"]["onnxruntime"]
    assert set(ort) == {"batch1", "batch4"}
    assert set(ort["batch1"]["configs"]) == {"classifier", "calibrator[usps]",
                                             "calibrator+classifier[usps]", "fused[usps]"}
    assert ort["batch4"]["configs"]["classifier"]["count"] == 5
    assert report["static"]["classifier"]["params"] == 3_133_962 - 2 * 64 - 2 * 128 - 2 * 256 - 2 * 512
    assert report["overhead_ratios"]["calibrator[usps]"]["params_pct_of_dtn"] > 0
    assert report["stream"]["frames"] == 40
    switching = report["stream"]["switching"]
    assert switching["switches"] >= 2 and switching["to_first_frame_ms"]["count"] >= 2
    assert 0 < switching["to_first_frame_ms"]["median"] < 1000
    assert report["environment"]["cores"] and "onnxruntime" in report["environment"]["versions"]
    md = (out / "report.md").read_text()
    assert "| classifier |" in md and "ESTIMATE" in md
    for png in report["plots"]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
