"""Fake onnxruntime sessions for scoring tests: onnxruntime's I/O binding on a ``run``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort

from recstream.export.metadata import GRAPH_INPUTS


class FakeBinding:
    """Stands in for ``onnxruntime.IOBinding``: holds what is bound."""

    def __init__(self) -> None:
        self.inputs: dict[str, ort.OrtValue] = {}
        self.outputs: dict[str, ort.OrtValue] = {}

    def bind_ortvalue_input(self, name: str, value: ort.OrtValue) -> None:
        self.inputs[name] = value

    def bind_ortvalue_output(self, name: str, value: ort.OrtValue) -> None:
        self.outputs[name] = value


class CopyingBinding(FakeBinding):
    """A binding on a CUDA session: onnxruntime copies each input to the device when it
    is bound (``IOBinding::BindInput``), so later changes to the array are not seen."""

    def bind_ortvalue_input(self, name: str, value: ort.OrtValue) -> None:
        self.inputs[name] = ort.OrtValue.ortvalue_from_numpy(value.numpy().copy())


class BindingSession:
    """Base of fake recommender sessions: subclasses compute ``run(None, feeds)`` ->
    ``[top_items, top_scores]``; runs through an I/O binding write them into the bound
    outputs, as onnxruntime does.  ``bindings`` counts the bindings made.  With
    ``on_cuda`` the session says it runs on CUDA and its bindings copy their inputs."""

    def __init__(self, on_cuda: bool = False) -> None:
        self.bindings = 0
        self.on_cuda = on_cuda

    def get_providers(self) -> list[str]:
        if self.on_cuda:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def get_inputs(self) -> list[SimpleNamespace]:
        """The recommender graph's inputs (``slots``: its length is the items per row)."""
        return [SimpleNamespace(name=name) for name in GRAPH_INPUTS["recs"]]

    def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def items_asked(feeds: dict[str, np.ndarray], top_k: int) -> int:
        """The items per row a run asks for: ``slots``' length, else ``top_k``."""
        return len(feeds["slots"]) if "slots" in feeds else top_k

    def io_binding(self) -> FakeBinding:
        self.bindings += 1
        return CopyingBinding() if self.on_cuda else FakeBinding()

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        feeds = {name: value.numpy() for name, value in binding.inputs.items()}
        top_items, top_scores = self.run(None, feeds)
        binding.outputs["top_items"].update_inplace(np.ascontiguousarray(top_items, np.int64))
        binding.outputs["top_scores"].update_inplace(np.ascontiguousarray(top_scores, np.float32))
