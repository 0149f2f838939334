"""recstream.export: ONNX export of the trained models, variants and parity checks."""
