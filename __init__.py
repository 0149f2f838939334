"""recstream: real-time recommendations and review sentiment for online shops.

The distribution has three subpackages: ``recstream.streams`` (the Faust worker and
everything that serves), ``recstream.model`` (PyTorch models, data adapters, training,
metrics) and ``recstream.export`` (ONNX export and parity checks).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
