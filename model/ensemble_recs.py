"""Combine trained recommenders into one ensemble checkpoint (``recstream combine recs``).

The members are checkpoints of ``recstream train recs`` on the same log (same
vocabulary, length and data fingerprint), typically the same command with other
``--seed``s, trained side by side (one per core).  The ensemble is validated on
the log's validation items like a trained model and saved as an ordinary
``recs`` checkpoint, so ``recstream evaluate recs`` and ``recstream export`` take it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recstream.model.checkpoint import save_checkpoint
from recstream.model.evaluate_recs import Validation
from recstream.model.sasrec import CHECKPOINT_NAME, SASRecEnsemble, load_recs
from recstream.model.sequences import Vocab, data_fingerprint, load_histories
from recstream.model.splits import split_histories

#: Meta entries every member must agree on.
SHARED = ("vocab", "max_len", "data_fingerprint")


def combine(
    members: Sequence[Path], data: Path, fmt: str, out: Path, seed: int = 0
) -> dict[str, Any]:
    """Write the ensemble of ``members`` to ``out``, validated on ``data``; returns its meta."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs two or more members, got {len(members)}")
    loaded = [load_recs(folder) for folder in members]
    first = loaded[0][1]
    side_info = bool(first["hparams"].get("use_side_info", True))
    for folder, (model, member_meta) in zip(members, loaded, strict=True):
        if isinstance(model, SASRecEnsemble):
            raise ValueError(f"{folder} is an ensemble already; combine its members instead")
        for key in SHARED:
            if member_meta.get(key) != first.get(key):
                raise ValueError(f"{folder}: its {key} differs from that of {members[0]}")
        if bool(member_meta["hparams"].get("use_side_info", True)) != side_info:
            raise ValueError(f"{folder}: trained with other side information than {members[0]}")
    if data_fingerprint([data], fmt) != first["data_fingerprint"]:
        raise ValueError(f"the members were not trained on {data} (data fingerprint differs)")
    hparams = [member_meta["hparams"] for _, member_meta in loaded]
    ensemble = SASRecEnsemble(hparams)
    for member, (model, _) in zip(ensemble.members, loaded, strict=True):
        member.load_state_dict(model.state_dict())
    ensemble.eval()
    split = split_histories(
        load_histories(data, fmt, side_info), vocab=Vocab(tuple(first["vocab"]))
    )
    max_len = int(first["max_len"])
    sampled, full = Validation(split, seed).reports(ensemble, max_len)
    meta = {
        "kind": "recs",
        "hparams": {"members": hparams},
        "vocab": first["vocab"],
        "popular": first["popular"],
        "max_len": max_len,
        "data_fingerprint": first["data_fingerprint"],
        "metrics": {"valid_sampled": sampled, "valid_full": full},
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": {
            "members": [
                {
                    "folder": str(folder),
                    "weights_sha256": member_meta.get("weights_sha256"),
                    **member_meta.get("training", {}),
                    "metrics": member_meta.get("metrics", {}),
                }
                for folder, (_, member_meta) in zip(members, loaded, strict=True)
            ],
            "validation_seed": seed,
        },
    }
    save_checkpoint(out, CHECKPOINT_NAME, ensemble, meta)
    return meta
