"""Export trained models to ONNX: graphs with top-k / softmax inside, metadata, parity.

``export_recs`` and ``export_sentiment`` take a model in eval mode and its
checkpoint metadata, export the serving graph with torch's dynamo exporter
(dynamic batch and sequence axes), check it against PyTorch on synthetic batches
and only then write ``recs.onnx`` / ``sentiment.onnx`` (atomically, so a running
worker never reads half a file).  Each requested variant (int8, fp16) is made from
the fp32 graph, measured against PyTorch fp32 and written only if it meets its
bar (``recstream.export.parity``); the measured agreement goes into its metadata.
Variant files left in the folder from other weights are removed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import onnx
import torch
from torch import nn

from recstream.export import metadata as md
from recstream.export import parity, variants
from recstream.model.features import FIRST_ITEM, WORD_BUCKETS, WORDS_PER_SEARCH
from recstream.streams.scoring import model_file, weights_sha256_of

log = logging.getLogger(__name__)

OPSET = 20


class ExportError(RuntimeError):
    """The model or its checkpoint metadata cannot be exported."""


#: Scores per group in the grouped top-k (:func:`grouped_top_k`), and the catalogue size
#: from which the recommender graph uses it.  Measured in onnxruntime 1.31 on one thread
#: (2-core machine, 2026-12-05, float scores of random embeddings, k 20): for 50,048
#: scores the plain TopK took 26-74 µs per row (batches of 8-256 rows; slower as the
#: batch outgrows the caches), the grouped one 12-25; groups of 16-32 were the fastest,
#: and below ~10,000 scores the plain TopK was (5.4 against 6.5-7.0 µs at 2,560).
TOP_K_GROUP: Final = 32
GROUPED_TOP_K_MIN_ITEMS: Final = 16_384


def grouped_top_k(scores: torch.Tensor, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top_scores, top_columns)`` of ``scores [B, group * C]``: ``torch.topk``'s values,
    from two small top-k's instead of one over every column.

    Column ``c + C * m`` (m < ``group``) belongs to group ``c``.  The ``k`` groups with
    the largest maxima hold the ``k`` largest scores: a score outside them is below each
    of their ``k`` maxima.  So the top ``k`` of those groups' ``group * k`` scores are the
    top ``k`` of the row (ties aside, where either pick is a top-``k`` score).  Groups of
    columns ``C`` apart make the maxima one reduction over the middle axis of a
    ``[B, group, C]`` view, which onnxruntime vectorises (it does not over contiguous
    blocks, a ``[B, C, group]`` view: tried and slower than the plain TopK).
    """
    rows = scores.shape[0]
    groups = scores.reshape(rows, group, -1)  # [B, group, C]
    best = groups.amax(dim=1).topk(k, dim=1).indices  # [B, k] groups
    candidates = groups.gather(2, best.unsqueeze(1).expand(-1, group, -1))  # [B, group, k]
    # The candidates' columns, gathered like their scores (no arithmetic on ``k``, which
    # is a run-time size in the exported graph).
    members = torch.arange(group, device=scores.device).view(1, group, 1) * groups.shape[2]
    columns = (best.unsqueeze(1) + members).reshape(rows, -1)  # [B, group * k]
    top_scores, at = candidates.reshape(rows, -1).topk(k, dim=1)
    return top_scores, columns.gather(1, at)


class RecsServingGraph(nn.Module):
    """``score_last`` + exclusion + top-k: what the recommender ONNX graph computes.

    Outputs ``top_items [B,K]`` (vocab indices, best first) and ``top_scores [B,K]``,
    where K is the length of the ``slots`` input (its values are not read): each run
    asks for the items it serves, at most ``top_k``, and a smaller K costs less (the
    top-k's work grows with it).  ``exclude [B,E]`` holds vocab indices set to -inf
    before top-k (0 pads it).  A -inf entry (masked) may name any masked index, PAD
    included.

    From ``GROUPED_TOP_K_MIN_ITEMS`` vocab indices on, the top-k is
    :func:`grouped_top_k` over the scores padded to a multiple of ``TOP_K_GROUP``
    (-inf columns, never named: a masked pick there is reported as PAD).
    """

    def __init__(
        self, model: nn.Module, top_k: int, num_items: int, group: int | None = None
    ) -> None:
        """``group``: scores per group of the grouped top-k, 0 for one plain top-k
        (default: :func:`top_k_group` of ``num_items``, the vocab indices)."""
        super().__init__()
        self.model = model
        self.top_k = top_k
        self.num_items = num_items
        self.group = group = top_k_group(num_items) if group is None else group
        self.columns = -(-num_items // group) * group if group else num_items
        if group and self.columns // group < top_k:
            raise ExportError(f"{num_items} items make fewer than k={top_k} groups of {group}")

    def forward(
        self,
        items: torch.Tensor,
        actions: torch.Tensor,
        words: torch.Tensor,
        lengths: torch.Tensor,
        exclude: torch.Tensor,
        slots: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = cast(Any, self.model)
        scores: torch.Tensor = model.score_last(
            items, actions, words, lengths, columns=self.columns
        )
        scores = scores.scatter(1, exclude, float("-inf"))
        k = slots.shape[0]
        if not self.group:
            top_scores, top_items = torch.topk(scores, k, dim=1)
            return top_items, top_scores
        top_scores, columns = grouped_top_k(scores, k, self.group)
        return torch.where(columns < self.num_items, columns, 0), top_scores


def top_k_group(num_items: int) -> int:
    """Scores per group of the recommender graph's top-k: 0 (a plain top-k) below
    ``GROUPED_TOP_K_MIN_ITEMS``, else ``TOP_K_GROUP``."""
    return TOP_K_GROUP if num_items >= GROUPED_TOP_K_MIN_ITEMS else 0


class SentimentServingGraph(nn.Module):
    """The sentiment encoder with softmax: ``probs [B, labels]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor, lexicon: torch.Tensor
    ) -> torch.Tensor:
        return torch.softmax(self.model(tokens, lengths, lexicon), dim=-1)


@dataclass
class WrittenModel:
    """One file ``export_*`` wrote (or refused to write), with its agreement."""

    kind: str
    variant: str
    path: Path
    version: str
    agreement: parity.Agreement
    written: bool
    measured_on: str = "CPUExecutionProvider"
    """The onnxruntime provider the agreement was measured on."""

    def describe(self) -> str:
        state = "written" if self.written else "NOT written"
        return (
            f"{self.kind} {self.variant}: {self.path.name} {state}; "
            f"{self.agreement.describe()} on {self.measured_on}"
        )


def _state_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _require(meta: dict[str, Any], keys: Sequence[str], kind: str) -> None:
    missing = [key for key in keys if key not in meta]
    if missing:
        raise ExportError(f"{kind} checkpoint metadata lacks {missing}")
    if meta["kind"] != kind:
        raise ExportError(f"checkpoint holds a {meta['kind']!r} model, expected {kind!r}")


def _common_values(kind: str, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    weights = meta.get("weights_sha256") or _state_sha256(model)
    trained_at = str(meta.get("trained_at") or "unknown")
    for key in ("trained_at", "data_fingerprint", "metrics"):
        if key not in meta:
            log.warning("%s checkpoint metadata lacks %s; exported as unknown", kind, key)
    return {
        "kind": kind,
        "format": md.FORMAT,
        "trained_at": trained_at,
        "weights_sha256": weights,
        "data_fingerprint": str(meta.get("data_fingerprint") or "unknown"),
        "metrics": meta.get("metrics") or {},
        "max_len": int(meta["max_len"]),
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _dynamo_export(
    graph: nn.Module,
    example: parity.Batch,
    dynamic: dict[str, dict[int, Any]],
    outputs: Sequence[str],
    path: Path,
) -> None:
    """Export ``graph`` with the dynamo exporter; raise ExportError on failure."""
    args = tuple(torch.from_numpy(v) for v in example.values())
    shapes = tuple(dynamic.get(name, {}) for name in example)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                args,
                dynamo=True,
                input_names=list(example),
                output_names=list(outputs),
                dynamic_shapes=shapes,
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {exc}") from exc
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path))


def write_with_metadata(src: Path, dest: Path, values: dict[str, Any]) -> None:
    """Copy an ONNX file adding recstream metadata; the final rename is atomic."""
    model = onnx.load(str(src))
    props = md.to_props(values)
    kept = [p for p in model.metadata_props if not p.key.startswith(md.PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    md.parse_metadata(props, values["kind"], str(dest))  # never write what serving refuses
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, dest)


def _runner(
    path: Path, variant: str, output_names: Sequence[str], providers: list[str]
) -> parity.Runner:
    session = variants.open_session(path, variant, providers)

    def run(batch: parity.Batch) -> list[np.ndarray]:
        return list(session.run(list(output_names), batch))

    return run


def _export_with_variants(
    kind: str,
    graph: nn.Module,
    example: parity.Batch,
    dynamic: dict[str, dict[int, Any]],
    batches: list[parity.Batch],
    values: dict[str, Any],
    out_dir: Path,
    variant_names: Sequence[str],
) -> list[WrittenModel]:
    outputs = md.GRAPH_OUTPUTS[kind]
    reference = [parity.torch_runner(graph)(batch) for batch in batches]
    written: list[WrittenModel] = []
    with tempfile.TemporaryDirectory(prefix=f"recstream-{kind}-") as tmp:
        fp32_tmp = Path(tmp) / f"{kind}.onnx"
        _dynamo_export(graph, example, dynamic, outputs, fp32_tmp)
        for variant in ("fp32", *[v for v in variant_names if v != "fp32"]):
            if variant not in md.VARIANTS:
                raise ExportError(f"unknown variant {variant!r} (choose from {md.VARIANTS})")
            name = f"{kind}.onnx" if variant == "fp32" else f"{kind}.{variant}.onnx"
            version = md.model_version(
                kind, values["trained_at"], values["weights_sha256"], variant
            )
            src = fp32_tmp
            providers = ["CPUExecutionProvider"]
            try:
                if variant != "fp32":
                    src = Path(tmp) / name
                    variants.MAKERS[variant](fp32_tmp, src)
                providers = variants.check_providers(src, variant)
                agreement = parity.measure(
                    kind, variant, batches, _runner(src, variant, outputs, providers), reference
                )
            except Exception as exc:
                if variant == "fp32":
                    raise ExportError(f"{kind} fp32 graph does not run: {exc}") from exc
                agreement = parity.Agreement(0, {}, False, problems=[f"could not be made: {exc}"])
            result = WrittenModel(
                kind, variant, out_dir / name, version, agreement, False, providers[0]
            )
            if variant == "fp32" and not agreement.passed:
                raise parity.ParityError(f"{kind} fp32 export refused: {agreement.describe()}")
            if agreement.passed:
                props = {
                    **values,
                    "variant": variant,
                    "version": version,
                    "agreement": {
                        **agreement.as_dict(),
                        "bar": agreement.bar,
                        "provider": providers[0],
                    },
                }
                write_with_metadata(src, out_dir / name, props)
                result.written = True
            log.debug("%s", result.describe())
            written.append(result)
    _remove_stale_variants(kind, out_dir, values["weights_sha256"], written)
    return written


def _remove_stale_variants(
    kind: str, out_dir: Path, weights_sha256: str, written: Sequence[WrittenModel]
) -> None:
    """Remove ``kind``'s variant files in ``out_dir`` made from other weights than the
    ones just exported and not replaced now (a variant that missed its bar this time):
    a worker would otherwise serve an older model beside the new fp32 one."""
    replaced = {result.path for result in written if result.written}
    for variant in md.VARIANTS:
        path = model_file(out_dir, kind, variant)
        if variant == "fp32" or path in replaced or not path.is_file():
            continue
        if weights_sha256_of(path) != weights_sha256:
            path.unlink()
            log.warning("removed %s: exported from other weights than the new %s.onnx", path, kind)


def export_recs(
    model: nn.Module,
    meta: dict[str, Any],
    out_dir: Path,
    variant_names: Sequence[str] = ("fp32",),
    top_k: int = md.DEFAULT_TOP_K,
) -> list[WrittenModel]:
    """Export a recommender (``score_last`` interface) and its variants into ``out_dir``."""
    _require(meta, ("kind", "vocab", "popular", "max_len"), "recs")
    vocab = [str(item) for item in meta["vocab"]]
    num_items = len(vocab) + FIRST_ITEM
    max_len = int(meta["max_len"])
    if max_len < 2:
        raise ExportError(f"max_len {max_len} too small to export (needs >= 2)")
    k = min(top_k, num_items)
    if k < top_k:
        log.warning("top-k %d exceeds the %d vocab indices; exporting k=%d", top_k, num_items, k)
    values = {
        **_common_values("recs", model, meta),
        "vocab": vocab,
        "vocab_sha256": md.vocab_sha256(vocab),
        "num_items": num_items,
        "popular": [str(item) for item in meta["popular"]],
        "top_k": k,
        "words_per_search": WORDS_PER_SEARCH,
        "word_buckets": WORD_BUCKETS,
    }
    batch, seq, excl = (
        torch.export.Dim("batch", min=1, max=65_536),
        torch.export.Dim("seq", min=1, max=max_len),
        torch.export.Dim("exclude", min=1, max=65_536),
    )
    dynamic = {
        "items": {0: batch, 1: seq},
        "actions": {0: batch, 1: seq},
        "words": {0: batch, 1: seq},
        "lengths": {0: batch},
        "exclude": {0: batch, 1: excl},
        # K from 1 to top_k (a graph of top_k 1 has one size; an example of 1 would fix it)
        "slots": {0: torch.export.Dim("slots", min=1, max=k)} if k > 1 else {},
    }
    rng = np.random.default_rng(7)
    example = parity.recs_batch(rng, 2, min(max_len, 5), num_items, exclude_width=2, k=min(k, 2))
    batches = list(parity.recs_batches(num_items, max_len, top_k=k))
    graph = RecsServingGraph(model.eval(), k, num_items).eval()
    return _export_with_variants(
        "recs", graph, example, dynamic, batches, values, out_dir, variant_names
    )


def _embedding_size(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return int(module.num_embeddings)
    raise ExportError("the sentiment model has no token embedding to draw check inputs from")


def export_sentiment(
    model: nn.Module,
    meta: dict[str, Any],
    out_dir: Path,
    variant_names: Sequence[str] = ("fp32",),
) -> list[WrittenModel]:
    """Export a sentiment encoder (softmax added) and its variants into ``out_dir``."""
    _require(meta, ("kind", "tokenizer", "labels", "max_len"), "sentiment")
    max_len = int(meta["max_len"])
    if max_len < 2:
        raise ExportError(f"max_len {max_len} too small to export (needs >= 2)")
    values = {
        **_common_values("sentiment", model, meta),
        "labels": [str(label) for label in meta["labels"]],
        "tokenizer": meta["tokenizer"],
    }
    # The encoder pads the sequence to a multiple of its patch stride, so the
    # sequence axis is left for torch.export to bound (Dim.DYNAMIC).
    batch = torch.export.Dim("batch", min=1, max=65_536)
    dynamic = {
        "tokens": {0: batch, 1: torch.export.Dim.DYNAMIC},
        "lengths": {0: batch},
        "lexicon": {0: batch},
    }
    vocab_size = _embedding_size(model)
    rng = np.random.default_rng(7)
    example = parity.sentiment_batch(rng, 2, min(max_len, 5), vocab_size)
    batches = list(parity.sentiment_batches(vocab_size, max_len))
    graph = SentimentServingGraph(model.eval()).eval()
    return _export_with_variants(
        "sentiment", graph, example, dynamic, batches, values, out_dir, variant_names
    )
