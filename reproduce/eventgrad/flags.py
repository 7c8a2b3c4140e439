"""The cost of EventGraD's flag round on the network model (evidence for NOTES.md#flag-round).

Every step our ranks tell each ring neighbour which tensors fired (one small message each way)
before the tensors go; the authors' ranks put values with one-sided MPI and send no flags. This
replays each stored run's trace on a network as it ran and with the flag messages dropped (their
compute gaps kept), each with the compute measured in the run and with none (the network alone),
and prints the simulated milliseconds per step, mean over seeds, per row (D-PSGD sends no flags):

    python -m reproduce.eventgrad.flags --tracking-uri sqlite:////tmp/x/mlflow.db --network wan

Without flags a receiver would not know which tensors to expect; the replay only prices what
the flags cost, as an estimate of what the authors' one-sided puts pay.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import numpy as np

from suite import netmodel, trace
from suite.algorithms.eventgrad import _FLAGS_TAG


def without_flags(tr: trace.Trace) -> trace.Trace:
    """``tr`` less the flag sends and receives (tags 0 and 1) and their waits; a dropped
    record's gap (compute before it) moves to the next record kept."""
    ranks = []
    for records in tr.ranks:
        kind = records["kind"]
        p2p = np.isin(kind, [trace.KIND["send"], trace.KIND["recv"]])
        flag = p2p & np.isin(records["tag"], [_FLAGS_TAG, _FLAGS_TAG + 1])
        wait = kind == trace.KIND["wait"]
        flag |= wait & flag[np.where(wait, records["ref"], 0)]
        keep = np.flatnonzero(~flag)
        gaps = np.cumsum(records["gap"])[keep]
        out = records[keep].copy()
        out["gap"] = np.diff(gaps, prepend=0.0)
        index = np.cumsum(~flag) - 1  # old record index -> new
        waits = out["kind"] == trace.KIND["wait"]
        out["ref"][waits] = index[out["ref"][waits]]
        ranks.append(out)
    return trace.Trace(tr.world_size, tr.groups, tr.channels, tuple(ranks), tr.truncated)


def main(argv: list[str] | None = None) -> int:
    from suite.tracking import open_client

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", default="eventgrad")
    parser.add_argument("--recipe", default="eventgrad/mnist")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--network", default="wan")
    args = parser.parse_args(argv)
    client = open_client(args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    where = (
        f"attributes.status = 'FINISHED' and tags.`suite.recipe` = '{args.recipe}' "
        f"and tags.`suite.profile` = '{args.profile}'"
    )
    per_row: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for run in client.search_runs([exp.experiment_id], filter_string=where):
        with tempfile.TemporaryDirectory() as tmp:
            tr = trace.load(client.download_artifacts(run.info.run_id, trace.ARTIFACT, tmp))
        steps = int(run.data.metrics["final.steps"])
        bare = (
            without_flags(tr)
            if run.data.params.get("algorithm", "").startswith("eventgrad")
            else tr
        )
        figures = [  # ms per step: as run, without flags; with the measured compute, then none
            1e3
            * netmodel.replay(t, args.network, steps=steps, compute_scale=c).network_seconds
            / steps
            for c in (1.0, 0.0)
            for t in (tr, bare)
        ]
        per_row[run.data.tags["suite.row"]].append((*figures, run.data.metrics["final.messages"]))
    print(
        f"{args.recipe} ({args.profile}) on {args.network}: simulated ms per step, mean over "
        "seeds; with the compute measured here, then with none (the network alone)"
    )
    print(
        f"{'row':<26} {'as run':>8} {'no flags':>9} {'net only':>9} {'no flags':>9} {'messages':>9}"
    )
    for row, values in sorted(per_row.items()):
        *ms, messages = np.mean(values, axis=0)
        print(f"{row:<26} " + " ".join(f"{v:>8.2f} " for v in ms) + f"{messages:>8.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
