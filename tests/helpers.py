"""Small real objects shared by tests (no mocks): tiny datasets, classifiers, calibrators."""

import numpy as np

from edge_calib.data import ImageSet
from edge_calib.models.classifiers import build_classifier, default_input_spec
from edge_calib.models.store import Classifier
from edge_calib.train.tensors import DomainData


def random_domain(n=64, seed=0, bright=0, spec=None, labelled=True, name="rand"):
    """Random uint8 images (28x28 grey) with labels; ``bright`` shifts the domain."""
    rng = np.random.default_rng(seed)
    images = np.clip(rng.integers(0, 200, (n, 28, 28, 1)) + bright, 0, 255).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64) if labelled else None
    spec = spec or default_input_spec("dtn")
    return DomainData(ImageSet(images, labels, name, "train"), spec)


def random_classifier(arch="dtn", seed=0) -> Classifier:
    import torch

    torch.manual_seed(seed)
    module = build_classifier(arch).eval()
    return Classifier(module, arch, default_input_spec(arch), 10, [str(i) for i in range(10)])


def wait_until(condition, thread, timeout=60.0, what="the runner"):
    """Poll ``condition()`` until it holds; fail (rather than hang the suite) when ``thread``
    has died or ``timeout`` seconds have passed."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if not thread.is_alive():
            raise AssertionError(f"{what} stopped before the condition held")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: condition not met within {timeout:.0f} s")
        time.sleep(0.02)
