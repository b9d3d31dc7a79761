"""The base layer every other part imports: errors, atomic files, safe names, the input
specification, progress bars, provenance, latency statistics and segmentation scores
(Python, numpy and OpenCV only: no torch, no ONNX Runtime)."""
