"""The ddp baseline's compiled communication hook (``ddp_hook.cpp``), built on first use.

Why compiled. DDP calls a Python hook from its backward pass for every bucket, and that alone
costs a small model's step 4-8% over DDP's built-in C++ all-reduce on 2 vCPUs (PyTorch's own
``allreduce_hook`` included: tests/benchmarks/test_bench_ddp.py), more than the suite's 2%
target for ``ddp`` against torch's DDP. This hook does the Python hook's arithmetic in C++ on
the same process group and keeps each all-reduce's bytes and times, and running totals of
them that the loop's per-step row reads; the transport takes them when its counters or trace
are read (:meth:`suite.transport.Transport.count_outside`), so what is counted and traced is
the same and no Python runs for them step by step. No library offers a counting hook, hence our own.

Built with PyTorch's JIT extension builder (``torch.utils.cpp_extension.load``: a C++
compiler and ninja; about a minute once, then cached under ``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``, one build per torch version; ranks that start together build it
once, the others wait). Where it cannot be built, ``ddp`` warns once and uses its Python hook
(same numbers, slower steps).
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from suite.launcher import beating

SOURCE = Path(__file__).with_name("ddp_hook.cpp")
NAME = "suite_ddp_hook_" + re.sub(r"\W", "_", torch.__version__)  # a build per torch version


@functools.cache
def compiled() -> Any | None:
    """The built extension (``install``; the records it returns are what the transport
    counts, :meth:`suite.transport.Transport.count_outside`), or None, with a warning, where
    it cannot be built here."""
    return build()


def build() -> Any | None:
    """Build (or load the cached build of) the extension; None, with a warning, on failure."""
    try:
        from torch.utils.cpp_extension import _get_build_directory, load

        if shutil.which("ninja") is None:  # torch runs `ninja`: the ninja package's, unactivated
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        folder = Path(_get_build_directory(NAME, verbose=False))  # torch's own choice
        # a first build takes about a minute: the rank is working, not hung
        with beating(), open(folder / "suite.lock", "w") as guard:
            # torch's lock file outlives a process killed while it loads (even a cached
            # build), and every later load would wait for it forever. Ours, a flock, dies
            # with its holder; whoever holds it is the only one loading, so a torch lock
            # found then is such a leftover.
            fcntl.flock(guard, fcntl.LOCK_EX)
            (folder / "lock").unlink(missing_ok=True)
            return load(
                name=NAME,
                sources=[str(SOURCE)],
                extra_cflags=["-O2"],
                build_directory=str(folder),
                verbose=False,
            )
    except Exception as e:  # no compiler, no ninja, headers of another torch...
        reason = str(e).strip().splitlines()[-1:] or [type(e).__name__]
        warnings.warn(
            f"ddp: the compiled communication hook could not be built ({reason[0][:300]}); "
            "using the Python hook, which counts the same but costs a small model's step a "
            "few percent (baselines/ddp_hook.py)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
