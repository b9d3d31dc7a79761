"""The digits accuracy report: aggregation over seeds, shared-classifier rows, the README block."""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from report_digits import BEGIN, END, collect, write_report  # noqa: E402

CPU = {"cpu": "Test CPU", "gpu": None}
GPU = {"cpu": "Test CPU", "gpu": "Test GPU"}


def _record(folder: Path, step: str, result: dict, machine=CPU, command="edge-calib x"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{step}.json").write_text(json.dumps(
        {"step": step, "command": command, "commit": "abc", "machine": machine, "result": result}))


def _seed(root: Path, seed: int, target_acc: float, own_classifier: bool, machine=CPU):
    folder = root / "mnist-usps" / f"seed{seed}"
    if own_classifier:
        _record(folder, "classifier", {"test_acc": 99.0})
    _record(folder, "source_only_target", {"accuracy": 78.5})
    _record(folder, "source_only_source", {"accuracy": 99.2})
    _record(folder, "ours_train", {"epochs": 50, "last5_monitor_target_test_acc": target_acc - 0.5,
                                   "time_per_epoch_s": 2.0}, machine)
    _record(folder, "ours_target", {"accuracy": target_acc})
    _record(folder, "ours_source", {"accuracy": 98.0})


def test_seeds_aggregate_and_shared_classifier_counts_once(tmp_path):
    _seed(tmp_path, 0, 88.0, own_classifier=True)
    _seed(tmp_path, 1, 90.0, own_classifier=False, machine=GPU)
    _seed(tmp_path, 2, 86.5, own_classifier=False, machine=GPU)
    task = collect(tmp_path)["mnist-usps"]
    rows = {r["method"]: r for r in task["table"]}
    ours = rows["calibrator, edge-calib recipe"]
    assert ours["target_acc"] == [88.0, 90.0, 86.5]
    assert ours["target_last5_mean"] == [87.5, 89.5, 86.0]
    # source only depends on the classifier alone: seeds 1-2 reuse seed 0's, so one value
    assert rows["source only (float DTN)"]["target_acc"] == [78.5]
    assert task["seeds"]["seed1"] == {"own_classifier": False, "calibrators": ["ours: Test GPU"]}


def test_report_files_and_readme_block(tmp_path):
    _seed(tmp_path, 0, 88.0, own_classifier=True)
    _seed(tmp_path, 1, 90.0, own_classifier=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold\n{END}\nafter\n")
    write_report(tmp_path, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "old" not in text
    mean, sd = statistics.mean([88.0, 90.0]), statistics.stdev([88.0, 90.0])
    assert f"{mean:.1f} ± {sd:.1f} (n=2)" in text
    data = json.loads((tmp_path / "digits.json").read_text())
    assert data["mnist-usps"]["table"][0]["method"] == "source only (float DTN)"
    assert (tmp_path / "digits.md").read_text().startswith("# Digits accuracy")
