"""Smaller or faster copies of an exported fp32 model: int8 (CPU) and fp16 (CUDA).

* ``int8``: dynamic quantization (per-channel, 7-bit weights, 8-bit activations
  quantized at run time) for the CPU provider, after
  onnxruntime's pre-processing step (``quant_pre_process``: shape inference and
  graph optimization).  Without that step the quantized embedding table is
  de-quantized on every call and int8 runs slower than fp32.
* ``fp16``: weights and activations in half precision, inputs and outputs kept
  in their fp32/int64 types, meant for the CUDA provider (its agreement is measured
  on CUDA where CUDA runs, else on the CPU with basic optimizations).

Whether a variant is written at all is decided by ``recstream.export.parity``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from recstream.streams.scoring import optimization_level, runs_on_cuda

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: Ops kept in fp32 by the fp16 conversion: the exclusion mask and top-k work on
#: scores that may be -inf, and fp16 would clip large finite scores.  The grouped
#: top-k's maxima and candidates (ReduceMax, GatherElements) run in fp16 and lose
#: nothing: the scores come out of the fp16 output layer, so fp16 holds them exactly.
FP16_KEEP_FP32 = ["TopK", "ScatterElements", "Softmax"]


def make_int8(fp32_path: Path, out_path: Path) -> None:
    """Write the int8 dynamic-quantized copy of ``fp32_path`` (with pre-processing)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="recstream-int8-") as tmp:
        # The exporter's intermediate shape hints can contradict onnx's own shape
        # inference inside the quantizer; drop them, inference recomputes them.
        plain = Path(tmp) / "plain.onnx"
        model = onnx.load(str(fp32_path))
        del model.graph.value_info[:]
        _unshare_gemm_weights(model)
        onnx.save(model, str(plain))
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(plain), str(pre))
        except Exception as exc:  # onnxruntime raises bare Exceptions here
            # Symbolic shape inference cannot follow every graph (the sentiment
            # encoder's stride padding); the optimization step still runs without it.
            log.info("int8 pre-processing without symbolic shapes (%s)", exc)
            quant_pre_process(str(plain), str(pre), skip_symbolic_shape=True)
        # 7-bit weights (reduce_range) avoid the int16 saturation of the u8 x s8
        # kernels on CPUs without VNNI; per-channel scales keep small columns exact.
        quantize_dynamic(
            pre, out_path, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True
        )


def _unshare_gemm_weights(model: onnx.ModelProto) -> None:
    """Give every Gemm its own copy of a weight that other nodes also read.

    The exporter merges identical initializers (e.g. the layers of a freshly
    initialised ``nn.TransformerEncoder``, which are deep copies of one layer), and
    the quantizer rewrites ``Gemm(transB=1)`` as ``MatMul`` by transposing the
    weight in place: a shared weight would then be transposed for every reader.
    """
    from onnx import TensorProto

    initializers = {init.name: init for init in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for number, node in enumerate(model.graph.node):
        if node.op_type != "Gemm":
            continue
        for position, name in enumerate(node.input):
            if name in initializers and readers[name] > 1:
                copy = TensorProto()
                copy.CopyFrom(initializers[name])
                copy.name = f"{name}__gemm{number}_{position}"
                model.graph.initializer.append(copy)
                node.input[position] = copy.name
                readers[name] -= 1


def make_fp16(fp32_path: Path, out_path: Path) -> None:
    """Write the fp16 copy of ``fp32_path``; inputs and outputs keep their types."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with tempfile.TemporaryDirectory(prefix="recstream-fp16-") as tmp:
        # Constants folded first, in fp32: onnxruntime folds at load time only nodes it
        # has a CPU kernel for, and it has none for an fp16 Pad (the padded output
        # layer of a grouped top-k), which would then run on every call.
        folded = Path(tmp) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])
        model = onnx.load(str(folded))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    onnx.save(half, str(out_path))


MAKERS = {"int8": make_int8, "fp16": make_fp16}


def check_providers(path: Path, variant: str) -> list[str]:
    """Where a variant's agreement is measured: fp16 on CUDA, its target, when CUDA runs
    here; everything else (and fp16 without a GPU) on the CPU."""
    if variant == "fp16" and runs_on_cuda(path):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(
    path: Path, variant: str, providers: list[str] | None = None, threads: int = 1
) -> ort.InferenceSession:
    """An inference session for checking a freshly written model (CPU unless told)."""
    providers = providers or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = optimization_level(variant, providers)
    return ort.InferenceSession(str(path), options, providers=providers)
