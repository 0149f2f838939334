"""recstream.model: PyTorch models, data adapters, training and metrics.

Importing this package does not import torch; the modules that need it do.
"""
