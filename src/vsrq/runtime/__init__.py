"""Running models: streaming PyTorch inference, ONNX export and onnxruntime, PyTorch's int8 path."""

RUNTIMES = ("torch", "onnxruntime", "torch-int8")
