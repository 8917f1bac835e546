"""Errors whose message a person understands; commands turn them into failure rows or exit codes."""


class InputError(ValueError):
    """A scan that cannot be used, with a sentence saying why (no traceback shown)."""


class StoreError(RuntimeError):
    """The output store is unreachable, foreign or not writable (a usage/environment error)."""
