"""Inference engines on the device: ONNX Runtime (default, any CPU) and TensorRT (NVIDIA)."""

BACKENDS = ("onnxruntime", "tensorrt")
