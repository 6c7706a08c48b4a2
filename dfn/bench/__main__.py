"""``python -m dfn.bench {ops,data,train,anchors,ab,guards} ...`` — dispatch to the benchmark subcommands.

Each subcommand module exposes ``add_arguments(parser)`` and ``main(args)``; modules are imported
lazily so one missing or broken benchmark does not take the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "ops": ("dfn.bench.ops", "dynamic filtering operators: fast path vs reference"),
    "data": ("dfn.bench.data", "data pipeline throughput"),
    "train": ("dfn.bench.train", "one training iteration of a config: s/iter, FLOP/s, fraction of peak"),
    "anchors": ("dfn.bench.anchors", "classical predictors (copy-last, Farneback flow) on a config's test clips"),
    "ab": ("dfn.bench.ab", "this code against another checkout, measured alternately: training iteration or fit"),
    "guards": ("dfn.bench.guards", "per-step cost of RunGuard and NonFiniteGuard: a fit with and without them"),
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            sys.exit(f"dfn.bench: benchmark module {module_name} is not available ({e})")
        raise


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m dfn.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    # Only the chosen subcommand's module is imported, so build the others' parsers as stubs.
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            _load(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    _load(SUBCOMMANDS[args.command][0]).main(args)


if __name__ == "__main__":
    main()
