"""Fake onnxruntime sessions for scoring tests: onnxruntime's I/O binding on a ``run``."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


class FakeBinding:
    """Stands in for ``onnxruntime.IOBinding``: holds what is bound."""

    def __init__(self) -> None:
        self.inputs: dict[str, ort.OrtValue] = {}
        self.outputs: dict[str, ort.OrtValue] = {}

    def bind_ortvalue_input(self, name: str, value: ort.OrtValue) -> None:
        self.inputs[name] = value

    def bind_ortvalue_output(self, name: str, value: ort.OrtValue) -> None:
        self.outputs[name] = value


class BindingSession:
    """Base of fake recommender sessions: subclasses compute ``run(None, feeds)`` ->
    ``[top_items, top_scores]``; runs through an I/O binding write them into the bound
    outputs, as onnxruntime does.  ``bindings`` counts the bindings made."""

    def __init__(self) -> None:
        self.bindings = 0

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def io_binding(self) -> FakeBinding:
        self.bindings += 1
        return FakeBinding()

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        feeds = {name: value.numpy() for name, value in binding.inputs.items()}
        top_items, top_scores = self.run(None, feeds)
        binding.outputs["top_items"].update_inplace(np.ascontiguousarray(top_items, np.int64))
        binding.outputs["top_scores"].update_inplace(np.ascontiguousarray(top_scores, np.float32))
