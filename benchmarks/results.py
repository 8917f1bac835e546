"""What the benchmark scripts share: their arguments (with `--quick`), publishing a table, figures.

A full run prints its table and writes it into its own section of benchmarks/RESULTS.md (the other
sections kept); figures go to benchmarks/figures. A `--quick` run (debug configs, tiny synthetic data
made in a temporary folder, a few steps; see benchmarks/quick_data.py) prints the same table and
writes nothing under benchmarks/: its figures and outputs stay in the temporary folder.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
FIGURES = HERE / "figures"
HEADER = "# Benchmark results\n\nEvery table is written by the script named in its command line; rerun it to update.\n"


def write_section(path: Path, key: str, title: str, body: str) -> None:
    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    section = f"{begin}\n## {title}\n\n{body}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser, described by the first paragraph of its docstring, with `--quick`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (debug configs, synthetic data in a temporary folder, a few steps) that "
                        "prints the table and writes nothing into benchmarks/ (RESULTS.md, figures)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave RESULTS.md alone")
    return parser


QuickSettings = Callable[[Path], dict[str, Any]]


@contextmanager
def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None,
                    quick_settings: QuickSettings | None = None) -> Iterator[argparse.Namespace]:
    """The parsed arguments; `args.scratch` is None in a full run.

    With --quick, `args.scratch` is a temporary folder (removed afterwards) and `quick_settings(scratch)`
    gives the quick values of arguments (data made in the folder, debug configs, step counts): each
    replaces an argument left at its default, in the order given; a callable value is called with the
    arguments so far, only when it is used (so expensive data is made only when not given).
    """
    args = parser.parse_args(argv)
    args.scratch = None
    if not args.quick:
        yield args
        return
    with tempfile.TemporaryDirectory(prefix="slicesr-bench-") as folder:
        args.scratch = Path(folder)
        for key, value in (quick_settings(args.scratch) if quick_settings else {}).items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value(args) if callable(value) else value)
        yield args


def publish(args: argparse.Namespace, key: str, title: str, table: str) -> None:
    """Print the table; a full run also writes it into section `key` of benchmarks/RESULTS.md."""
    print(table)
    if not args.quick and not args.no_write:
        write_section(RESULTS, key, title, table)


def figures_dir(args: argparse.Namespace) -> Path:
    """benchmarks/figures in a full run, a folder in the scratch folder in a quick one."""
    folder = args.scratch / "figures" if args.quick else FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
