"""EventGraD (Ghosh, Aquino, Gupta, arXiv 2103.07454): event-triggered ring communication.

Paper claims (notes: reproduce/eventgrad/NOTES.md; the paper body was not available, the numbers
are its headline figures): up to about 60% fewer messages than communicating every iteration on
CIFAR-10 with ResNet-18 at the same accuracy (the abstract; the paper's best case), about 70% on
MNIST with its CNN-2 (the authors' README and their MLHPC/SC20 workshop paper); Top-K on the
firing tensors cuts the transmitted elements further. Per-table numbers (per worker count, per
horizon) were not available, so the claims read "savings >= X and accuracy within Y points of
D-PSGD".

Savings are counted in the paper's unit, tensor events (``savings``: 1 - events / possible
events; flags excluded); bytes saved against D-PSGD (flags included) are reported beside them
under their own name (the report's "wire bytes saved vs D-PSGD" column and a claim on
``wire_bytes``).

Reproduce: ``make reproduce-eventgrad`` (smoke: digits, 4 ranks, 2 seeds, under 3 minutes on 2
CPU cores) or ``suite reproduce eventgrad --profile full --set data_dir=DIR``.
Sweep: ``suite sweep eventgrad/mnist --space horizon --trials 16`` (accuracy against messages).
Flag round's cost on the network model: ``python -m reproduce.eventgrad.flags --tracking-uri URI``.

Deviations (NOTES.md): our ranks exchange a flag message per neighbour every step, the authors'
put values one-sidedly (one extra latency a step); the averaged final model also averages
BatchNorm running statistics (the authors' keeps rank 0's); the number of ranks was not found (4
here, a recipe parameter); the smoke profile uses the digits MLP, not CNN-2 on MNIST.
"""

from suite.recipes import Claim, Known, Profile, Recipe, Row, Space, register

DPSGD = "D-PSGD"
H0, H1, H095 = "EventGraD h=0", "EventGraD h=1", "EventGraD h=0.95"
STATIC, TOPK = "EventGraD static c=0.005", "EventGraD h=1 + Top-10%"
SPEC = "our smoke expectations (reproduce/eventgrad/NOTES.md#smoke)"
NOTES = "reproduce/eventgrad/NOTES.md"
# the paper's unit beside the bytes: the report's extra results columns
COLUMNS = (
    ("savings", "tensor events saved (paper's unit)"),
    ("events", "tensor events sent"),
)

ROWS = (
    Row(DPSGD, "dpsgd", ("algorithm.topology=ring",)),
    Row(H0, "eventgrad", ("algorithm.horizon=0",)),
    Row(H1, "eventgrad", ("algorithm.horizon=1",)),
    Row(H095, "eventgrad", ("algorithm.horizon=0.95",)),
    Row(STATIC, "eventgrad", ("algorithm.mode=static", "algorithm.threshold=0.005")),
    Row(TOPK, "eventgrad_topk", ("algorithm.horizon=1", "algorithm.topk=0.1")),
)

SPACES = {
    "horizon": Space(
        H1,
        lambda t: [f"algorithm.horizon={t.suggest_float('horizon', 0.5, 1.0)}"],
        objectives=(("test_accuracy", "maximize"), ("messages", "minimize")),
        description="horizon h: accuracy against messages (Pareto)",
    ),
    "threshold": Space(
        STATIC,
        lambda t: [f"algorithm.threshold={t.suggest_float('threshold', 1e-4, 0.1, log=True)}"],
        objectives=(("test_accuracy", "maximize"), ("messages", "minimize")),
        description="static threshold c: accuracy against messages (Pareto)",
    ),
    "topk": Space(
        TOPK,
        lambda t: [f"algorithm.topk={t.suggest_float('topk', 0.01, 0.5, log=True)}"],
        objectives=(("test_accuracy", "maximize"), ("wire_bytes", "minimize")),
        description="Top-K fraction: accuracy against wire bytes (Pareto)",
    ),
}

SMOKE = Profile(
    ("dataset=digits", "model=mlp", "nproc=4", "steps=300", "eval_every=50"),
    seeds=(0, 1),
    note="scikit-learn digits, MLP (9,610 parameters, 4 tensors), 4 ranks, 300 steps, 2 seeds",
)


# The paper's MNIST setup (the authors' dmnist/event) on Fashion-MNIST, which this machine has:
# the savings and "same accuracy" claims are relative, so they are checked here (NOTES.md#real)
REAL = Profile(
    ("dataset=fashion_mnist", "model=cnn2", "nproc=4", "batch_size=64", "epochs=10",
     "optim.lr=0.05", "eval_every=500"),
    seeds=(0, 1),
    note="Fashion-MNIST in place of MNIST (NOTES.md#real), CNN-2, 4 ranks x batch 64, plain SGD "
    "lr 0.05, 10 epochs (2,340 steps), 2 seeds: the paper's MNIST setup",
)  # fmt: skip
PAPER_SCALE = ("real", "full")  # where the paper's relative claims are checked


def _claims(paper_savings: float, source: str) -> tuple[Claim, ...]:
    return (
        Claim("savings", H1, ">=", value=0.5, source=SPEC, profiles=("smoke",)),
        Claim(
            "test_accuracy",
            H1,
            ">=",
            other=DPSGD,
            tolerance=0.015,
            source=SPEC,
            profiles=("smoke",),
        ),
        # payload bytes: both rows only send point to point, where wire bytes equal payload
        Claim(
            "bytes_sent",
            TOPK,
            "<=",
            other=H1,
            scale=0.5,
            profiles=("smoke", "real"),
            source=SPEC + " (payload bytes; both rows send point to point only)",
        ),
        Claim(
            "test_accuracy",
            TOPK,
            ">=",
            other=H1,
            tolerance=0.02,
            profiles=("smoke", *PAPER_SCALE),
            source="spec: Top-K cuts transmitted elements further at similar accuracy (within "
            "2 points of h = 1: the spec's ~1-2 points for h = 1 against h = 0)",
        ),
        # bytes saved against D-PSGD, flags included: named apart from the paper's savings
        Claim(
            "wire_bytes",
            H1,
            "<=",
            other=DPSGD,
            scale=0.7,
            source=f"{SPEC}: at least 30% of D-PSGD's wire bytes saved (flags included)",
            profiles=("smoke",),
        ),
        # in simulated time: each run's trace replayed on the wan preset (100 Mbit/s, 20 ms)
        Claim(
            "network_seconds_to_target@wan",
            H1,
            "<=",
            other=DPSGD,
            source="our expectation: fewer messages reach the target no later where the network "
            "is slow (simulated: traces replayed on the wan preset)",
            known=(
                Known(
                    "smoke",
                    "latency sets the time of the 38 KB smoke model on wan: our flag round (one "
                    "20 ms round a step the authors' one-sided puts do not pay) makes h = 1 "
                    "43 ms a step against D-PSGD's 26 ms; without it, its per-tensor messages "
                    "still take 32 ms",
                    f"{NOTES}#flag-round",
                ),
            ),
        ),
        Claim("savings", H0, "within", value=0.0, source="h = 0 fires every tensor every step"),
        Claim(
            "savings",
            H1,
            ">=",
            value=paper_savings,
            tolerance=0.05,
            paper_value=paper_savings,
            source=f"{source}; at real on Fashion-MNIST, not the paper's MNIST",
            profiles=PAPER_SCALE,
        ),
        Claim(
            "test_accuracy",
            H1,
            ">=",
            other=DPSGD,
            tolerance=0.01,
            source=f"{source}, same accuracy (at real: relative to D-PSGD on Fashion-MNIST)",
            profiles=PAPER_SCALE,
        ),
    )


register(
    Recipe(
        paper="eventgrad",
        key="MNIST",
        title="EventGraD on MNIST with CNN-2 (smoke: digits MLP): messages saved, same accuracy",
        rows=ROWS,
        claims=_claims(
            0.70,
            "~70% fewer messages on MNIST: the authors' README and their MLHPC/SC20 workshop "
            "paper (reproduce/eventgrad/NOTES.md#claims)",
        ),
        profiles={
            "smoke": SMOKE,
            "real": REAL,
            "full": Profile(
                (
                    "dataset=mnist",
                    "model=cnn2",
                    "nproc=4",
                    "batch_size=64",
                    "epochs=10",
                    "optim.lr=0.05",
                    "eval_every=500",
                ),
                seeds=(0, 1, 2),
                note="MNIST, CNN-2, 4 ranks x batch 64, plain SGD lr 0.05, 10 epochs",
            ),
        },
        command="make reproduce-eventgrad  (real: make reproduce-eventgrad PROFILE=real; full: "
        "suite reproduce eventgrad --profile full --set data_dir=DIR)",
        runtime="smoke: under 3 minutes on 2 CPU cores; real: about 21 minutes on 2 CPU cores "
        "for its 12 runs, then a few minutes for the report; full: about an hour "
        "on CPU",
        deviations="smoke uses digits and an MLP; real uses Fashion-MNIST in place of MNIST "
        "(NOTES.md#real); ranks = 4 (the paper's count was not found); "
        "a flag message per neighbour and step (NOTES.md#flag-round); the averaged final model "
        "averages BatchNorm statistics too (NOTES.md#batchnorm)",
        reference=DPSGD,
        spaces=SPACES,
        figures=("firing",),
        columns=COLUMNS,
    )
)

register(
    Recipe(
        paper="eventgrad",
        key="CIFAR-10",
        title="EventGraD on CIFAR-10 with ResNet-18: up to ~60% fewer messages, same accuracy",
        rows=ROWS,
        claims=_claims(
            0.60,
            "abstract: up to ~60% fewer messages on CIFAR-10, the paper's best case "
            "(reproduce/eventgrad/NOTES.md#claims)",
        ),
        profiles={
            "full": Profile(
                (
                    "dataset=cifar10",
                    "model=resnet18_cifar",
                    "nproc=4",
                    "batch_size=64",
                    "epochs=20",
                    "optim.lr=0.01",
                    "optim.momentum=0.9",
                    "eval_every=500",
                ),
                seeds=(0, 1, 2),
                note="CIFAR-10, ResNet-18 (CIFAR stem), global batch 256 over 4 ranks, "
                "momentum SGD lr 0.01, 20 epochs, normalised inputs (the code feeds raw 0-255: "
                "--set dataset.normalize=false)",
            ),
        },
        command="suite reproduce eventgrad --profile full --set data_dir=DIR",
        runtime="full: hours on CPU; about an hour on one GPU per rank",
        deviations="ranks = 4 (not found in the paper); standard normalisation by default; a "
        "flag message per neighbour and step (NOTES.md#flag-round); the averaged final model "
        "averages BatchNorm statistics too, the authors' keeps rank 0's (NOTES.md#batchnorm)",
        reference=DPSGD,
        spaces=SPACES,
        figures=("firing",),
        columns=COLUMNS,
    )
)
