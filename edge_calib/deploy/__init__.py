"""What crosses to the device, torch-free: the bundle format (manifest, hashes, entries) and
ONNX Runtime sessions on the CPU (used below models/, export/ and engines/)."""
