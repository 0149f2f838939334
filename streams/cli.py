"""The ``recstream`` command line.

Each command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``.  Command modules are imported to build the parser, so they
must not import torch at module level: training and export import it inside
``run``.  That keeps ``recstream worker`` (and the whole serving path) torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

#: command -> module, or command -> {subcommand -> module}
COMMANDS: dict[str, str | dict[str, str]] = {
    "broker": "recstream.streams.broker",
    "topics": "recstream.streams.topic_admin",
    "worker": "recstream.streams.worker",
    "demo": "recstream.streams.demo",
    "replay": "recstream.streams.replay",
    "generate": "recstream.model.shoplog",
    "train": {
        "recs": "recstream.model.train_recs_cli",
        "sentiment": "recstream.model.train_sentiment_cli",
    },
    "evaluate": {
        "recs": "recstream.model.evaluate_recs_cli",
        "sentiment": "recstream.model.evaluate_sentiment_cli",
        "replay": "recstream.streams.offline_eval",
    },
    "combine": {"recs": "recstream.model.ensemble_recs_cli"},
    "export": "recstream.export.export_cli",
}


class CommandModule(Protocol):
    """What a command module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(module_name: str) -> CommandModule:
    return cast(CommandModule, importlib.import_module(module_name))


def _add_command(sub: argparse._SubParsersAction, name: str, module_name: str) -> None:
    module = _load(module_name)
    parser = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
    module.add_arguments(parser)
    parser.set_defaults(_run=module.run)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (imports every command module, none of them torch)."""
    parser = argparse.ArgumentParser(
        prog="recstream", description="Real-time recommendations and review sentiment on Kafka."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, target in COMMANDS.items():
        if isinstance(target, str):
            _add_command(sub, name, target)
            continue
        group = sub.add_parser(name, help=f"{name} a model ({', '.join(target)})")
        group_sub = group.add_subparsers(dest="what", required=True)
        for what, module_name in target.items():
            _add_command(group_sub, what, module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
