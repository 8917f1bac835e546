"""Ray Train / DeepSpeed glue: adapts the in-process training loops of `slicesr` to distributed workers.

Only this package imports ray and deepspeed; the library stays importable without them.
"""
