"""Ray Train / DeepSpeed glue: adapts the in-process training loops of `slicesr` to distributed workers.

Only this package imports ray and deepspeed; the library stays importable without them.
"""

import os
import sys

# DeepSpeed compiles its CPU communication op into TORCH_EXTENSIONS_DIR, by default ~/.cache, which
# every checkout on the machine shares: a build killed half-way there leaves a lock file that makes
# every later build, in any checkout, wait on it forever (a CI run hung 90 minutes on one). A virtual
# environment gets its own folder; an explicit setting (the Docker image sets one) wins.
if sys.prefix != sys.base_prefix:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))
