"""What every command of the project shares: exit codes, usage errors, logging, option parsing."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

import yaml

from slicesr.errors import StoreError

EXIT_OK = 0  # all done
EXIT_SOME_FAILED = 1  # some inputs failed, the rest done
EXIT_USAGE = 2  # usage or environment error


class UsageError(ValueError):
    """Bad arguments or environment: the command does nothing and exits 2."""


class CommandFailed(RuntimeError):
    """The command ran and did not get its work done (a training or every input of a step failed): exit 1."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Dask's scheduler and nannies narrate every start and stop at INFO.
    for noisy in ("distributed", "dask", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_scalar(text: str) -> Any:
    """YAML scalar parsing for KEY=VALUE options: true -> bool, 3 -> int, anything else a string."""
    for number in (int, float):  # YAML 1.1 reads "1e-3" as a string
        try:
            return number(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None and text.strip() not in ("null", "~"):
        return text
    return value  # scalars, and flow lists/mappings such as [1000, 0]


TTA_ANGLES_HELP = ("test-time augmentation (--tta implied) on the slices rotated in-plane by these angles in degrees "
                   "as well, comma-separated: each costs 2 to 3 times the unrotated passes; 45 is the one measured to "
                   "help (benchmarks/NOTES.md)")

# the names of slicesr.inference.TTA_FLIPS (that module imports torch; the CLIs list them before importing it)
TTA_FLIP_NAMES = ("all", "slice")
TTA_FLIPS_HELP = ("which flips test-time augmentation averages (other than all: --tta implied): all (the 8 flips of the "
                  "three axes, the default) or slice (the slice axis's 2 alone: half the passes of a through-plane 2D "
                  "generator, within 0.01 dB of all on the validation brains; benchmarks/NOTES.md)")


def parse_angles(text: str) -> tuple[float, ...]:
    """DEG[,DEG...] -> a tuple of floats (an argparse type: a bad value is a usage error)."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected degrees separated by commas, got {text!r}") from None


ADAPT_PATCH_HELP = ("the per-scan adaptation's training patch, slices,rows,cols (default: the model's sr.patch_size); "
                    "a step costs about what its patch holds (e.g. 33,64,64 for a model trained on 65,64,64)")


def parse_patch(text: str) -> tuple[int, int, int]:
    """D,H,W -> three positive whole numbers (an argparse type: a bad value is a usage error)."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive whole numbers D,H,W, got {text!r}")
    return values


def parse_storage_options(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs into an fsspec storage_options dict; dotted keys nest (client_kwargs.region_name=...)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option expects KEY=VALUE, got {pair!r}")
        target = options
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise UsageError(f"--storage-option {key!r} conflicts with an earlier option")
        target[leaf] = parse_scalar(value)
    return options


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                command: Callable[[argparse.Namespace], int], *,
                usage_errors: tuple[type[Exception], ...] = (), other_errors: bool = True) -> int:
    """Parse `argv`, set up logging and run `command`: the exit-code convention of every CLI.

    Usage and environment errors become one `error: ...` line and exit 2, never a traceback (it is
    logged at DEBUG: `-v` shows it where the command has that flag); `CommandFailed` is one line and
    exit 1. `usage_errors`: more exception types that print only their message (exit 2). With
    `other_errors=False` any other exception is not caught (a traceback, exit 1): for commands that
    run long after their checks, where it is no usage or environment error."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    setup_logging(bool(getattr(args, "verbose", False)))
    try:
        return command(args)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    except (ValueError, StoreError, *usage_errors) as exc:  # UsageError and InputError included: their text says it all
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - credentials, endpoints, corrupt weights, missing backends, ...
        if not other_errors:
            raise
        logging.getLogger("slicesr").debug("environment error", exc_info=True)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def finish(summary: str, failures: list[dict[str, Any]], name_key: str = "source") -> int:
    """Print a command's one-line summary, then each failed input and its reason (stderr); the exit code:
    EXIT_SOME_FAILED when any input failed (the rest were done), EXIT_OK otherwise."""
    print(summary)
    for failure in failures:
        print(f"  failed: {failure[name_key]}: {failure['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if failures else EXIT_OK


def add_batch_options(parser: argparse.ArgumentParser, overwrite_help: str) -> None:
    """The options of commands over many inputs: fsspec storage options, redoing finished outputs,
    progress bar and verbosity."""
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="fsspec/s3fs option for inputs and output, e.g. endpoint_url=http://127.0.0.1:9000 "
                        "(repeatable; dotted keys nest)")
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")
