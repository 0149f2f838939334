"""``recstream export``: checkpoints in, checked ONNX files out, clear refusals."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from recstream.export import export_cli
from recstream.model.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from conftest import Exported


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_module_does_not_import_torch() -> None:
    code = (
        "import sys, recstream.export.export_cli\n"
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.usefixtures("reuse_exported_graph")
def test_export_from_checkpoints(
    exported: Exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_checkpoint(tmp_path / "recs-ckpt", "recs", exported.recs_model, exported.recs_meta)
    save_checkpoint(
        tmp_path / "sent-ckpt", "sentiment", exported.sentiment_model, exported.sentiment_meta
    )
    out = tmp_path / "models"
    args = _args(
        "--recs", str(tmp_path / "recs-ckpt"),
        "--sentiment", str(tmp_path / "sent-ckpt"),
        "--out", str(out),
    )  # fmt: skip
    assert args.variants == "fp32,int8"  # int8 by default: what the CPU serves by default
    assert export_cli.run(args) == 0
    printed = capsys.readouterr().out
    assert "recs fp32: recs.onnx written" in printed
    assert "sentiment fp32: sentiment.onnx written" in printed
    assert "recs int8: recs.int8.onnx" in printed  # written or not, its agreement is shown
    assert (out / "recs.onnx").exists() and (out / "sentiment.onnx").exists()


def test_missing_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_cli.run(_args("--recs", str(tmp_path / "nope"), "--out", str(tmp_path))) == 1
    assert "recs: export refused: no checkpoint metadata" in capsys.readouterr().out
    assert not (tmp_path / "recs.onnx").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    assert export_cli.run(_args("--out", str(tmp_path))) == 2
    with pytest.raises(SystemExit, match="unknown variants"):
        export_cli.run(_args("--recs", str(tmp_path), "--variants", "fp32,int3"))
    assert export_cli.run(_args("--recs", str(tmp_path), "--top-k", "0")) == 2
