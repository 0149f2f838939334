"""The command line builds without torch, and the serving path never imports it."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import recstream.streams
from recstream.streams.cli import COMMANDS


def _imports_torch(code: str) -> bool:
    probe = f"{code}\nimport sys\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().endswith("True")


def test_every_command_module_builds_its_parser_without_torch() -> None:
    assert not _imports_torch("from recstream.streams.cli import build_parser; build_parser()")


def test_no_streams_module_imports_torch() -> None:
    names = [m.name for m in pkgutil.iter_modules(recstream.streams.__path__)]
    assert "records" in names
    imports = "\n".join(f"import recstream.streams.{name}" for name in names)
    assert not _imports_torch(imports)


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "recstream", "--help"], capture_output=True, text=True, check=True
    )
    for name in COMMANDS:
        assert name in out.stdout
