"""Running models: streaming PyTorch inference, ONNX export and onnxruntime."""
