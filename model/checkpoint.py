"""Saving and loading trained models: weights beside a JSON file of everything else.

A checkpoint folder holds ``NAME.pt`` (the ``state_dict``) and ``NAME.json``: the
model kind, its hyper-parameters (the constructor's keyword arguments), the
vocabulary or tokenizer, the training data fingerprint, validation metrics and
the training time.  Nothing about a model is encoded in file names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def meta_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.json"


def weights_path(folder: Path, name: str) -> Path:
    return Path(folder) / f"{name}.pt"


def save_checkpoint(folder: Path, name: str, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write ``NAME.pt`` and ``NAME.json``; ``meta`` must hold ``kind`` and ``hparams``."""
    import torch

    missing = {"kind", "hparams"} - meta.keys()
    if missing:
        raise ValueError(f"checkpoint meta lacks {sorted(missing)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights_path(folder, name))
    meta = {**meta, "weights_sha256": file_sha256(weights_path(folder, name))}
    meta_path(folder, name).write_text(json.dumps(meta, indent=1, ensure_ascii=False))


def load_meta(folder: Path, name: str) -> dict[str, Any]:
    """Read ``NAME.json`` of a checkpoint folder, with a clear error when absent."""
    path = meta_path(folder, name)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint metadata at {path}")
    meta: dict[str, Any] = json.loads(path.read_text())
    return meta


def load_state(folder: Path, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Read ``NAME.pt`` after checking it is the file the metadata recorded."""
    import torch

    path = weights_path(folder, name)
    digest = file_sha256(path)
    if meta.get("weights_sha256") not in (None, digest):
        raise ValueError(f"{path} does not match its recorded hash (truncated or replaced?)")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
