"""What `run` does at start-up and per frame, counted in a real process: each ONNX graph of the
bundle is read from disk once (by Python or by ONNX Runtime), and the loop asks the
controller once per frame."""

import json
import subprocess
import sys

COUNTING = """
import collections, json, sys
import onnxruntime as ort
bundle, opened = sys.argv[1], collections.Counter()
def hook(event, args):  # every file Python opens
    if event == "open" and isinstance(args[0], str) and args[0].startswith(bundle) \\
            and args[0].endswith(".onnx"):
        opened[args[0][len(bundle) + 1:]] += 1
sys.addaudithook(hook)
create = ort.InferenceSession.__init__
def session(self, model, *args, **kwargs):  # a session ONNX Runtime reads from a path
    if isinstance(model, str) and model.startswith(bundle):
        opened[model[len(bundle) + 1:]] += 1
    create(self, model, *args, **kwargs)
ort.InferenceSession.__init__ = session
from edge_calib.runtime.controller import Controller
calls = collections.Counter()  # the controller's methods the frame loop calls
def counted(name, method):
    def call(*args, **kwargs):
        if sys._getframe(1).f_code.co_filename.endswith("stream.py"):
            calls[name] += 1
        return method(*args, **kwargs)
    return call
for name, method in list(vars(Controller).items()):
    if callable(method) and not name.startswith("__"):
        setattr(Controller, name, counted(name, method))
from edge_calib.cli import main
try:
    main(sys.argv[2:], standalone_mode=False)
finally:
    print("COUNTED " + json.dumps({"opened": opened, "calls": calls}))
"""


def test_run_reads_each_graph_once_and_asks_the_controller_once_a_frame(bundle_dir,
                                                                         domain_video, tmp_path):
    """`run --domain auto` on the digits bundle: every .onnx file in it is read once (the
    manifest check's bytes feed the sessions), and the loop calls the controller once per frame
    (``next_frame``) and once at the end (``close``)."""
    frames = 7
    proc = subprocess.run(
        [sys.executable, "-c", COUNTING, str(bundle_dir), "run", "--deploy", str(bundle_dir),
         "--input", str(domain_video[0]), "--domain", "auto", "--headless", "--max-frames",
         str(frames), "--predictions", str(tmp_path / "p.jsonl")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counted = json.loads(proc.stdout.rsplit("COUNTED ", 1)[1])
    graphs = sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*.onnx"))
    assert len(graphs) >= 3  # the classifier, the calibrator and the fused graph
    assert sorted(counted["opened"]) == graphs and set(counted["opened"].values()) == {1}, \
        counted["opened"]
    assert counted["calls"] == {"next_frame": frames, "close": 1}
