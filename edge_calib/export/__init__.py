"""Export to ONNX: float graphs, explicit Q/DQ INT8 graphs, fused calibrator -> classifier."""
