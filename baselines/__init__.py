"""Reference algorithms the papers compare against, in the same registry as the rest."""

from baselines import (  # noqa: F401  (registration)
    allreduce_sgd,
    compressed_sgd,
    consensus_backup,
    ddp,
    dpsgd,
    ef_sgd,
    local_sgd,
    powersgd,
    sgp,
    single,
    topk_sgd,
)
