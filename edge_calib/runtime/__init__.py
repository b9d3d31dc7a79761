"""The camera-stream runtime (device side: numpy, OpenCV, onnxruntime or TensorRT; no torch)."""
