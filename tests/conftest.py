"""Fixtures shared by the test packages."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of tiny random-init ONNX models (``export.tiny``), built once."""
    pytest.importorskip("torch")
    from recstream.export.tiny import build_tiny_models

    folder = tmp_path_factory.mktemp("tiny-models")
    build_tiny_models(folder)
    return folder
