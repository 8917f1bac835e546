"""The `slicesr` command: thin subcommands over the library API.

    slicesr store-info DEST [--storage-option KEY=VALUE ...]
    slicesr config [--config FILE] [--set a.b=value ...]     (print the resolved config)

Exit codes: 0 all done, 1 some inputs failed (the rest done), 2 usage or environment error.
"""

from __future__ import annotations

import argparse
import sys

from slicesr.cli_common import EXIT_OK, EXIT_USAGE, UsageError, parse_storage_options, setup_logging
from slicesr.config import dump_config, load_config
from slicesr.errors import StoreError
from slicesr.store import SliceStore, summarize


def _store_info(args: argparse.Namespace) -> int:
    store = SliceStore.open(args.store, parse_storage_options(args.storage_option))
    print(summarize(store))
    return EXIT_OK


def _config(args: argparse.Namespace) -> int:
    print(dump_config(load_config(args.config, args.set)), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slicesr", description="Reduce the slice spacing of thick-slice MR scans.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("store-info", help="summarise a slice store")
    info.add_argument("store", metavar="DEST")
    info.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    info.set_defaults(handler=_store_info)
    config = sub.add_parser("config", help="print the resolved config")
    config.add_argument("--config", default=None)
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    config.set_defaults(handler=_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    setup_logging()
    try:
        return args.handler(args)
    except (UsageError, StoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
