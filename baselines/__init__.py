"""Reference algorithms the papers compare against, in the same registry as the rest."""

from baselines import allreduce_sgd, dpsgd, local_sgd, single  # noqa: F401  (registration)
