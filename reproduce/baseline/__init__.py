"""Baseline: Local SGD at two averaging periods against all-reduce SGD.

Not a paper: the reference trade-off every communication-saving method is measured against.
Local SGD (Stich, "Local SGD converges fast and communicates little", ICLR 2019) averages the
parameters every H steps instead of all-reducing gradients every step, so it sends 1/H of the
bytes; the question is how much accuracy that costs.

Reproduce: ``suite reproduce baseline`` (smoke, about a minute on 2 CPU cores) or
``suite reproduce baseline --profile full --set data_dir=~/data`` (CIFAR-10 ResNet-20 on 8 ranks;
hours on CPU, minutes on GPUs). Sweep: ``suite sweep baseline/periods --space period --trials 12``.
The claims are our expectations, written before the runs; reproduce/baseline/NOTES.md says why.
"""

from suite.recipes import Claim, Profile, Recipe, Row, Space, register

ALLREDUCE, LOCAL4, LOCAL16 = "All-reduce SGD", "Local SGD (H=4)", "Local SGD (H=16)"
BY_CONSTRUCTION = (
    "by construction: a parameter average per H steps, not a gradient all-reduce per step "
    "(payload bytes: both rows all-reduce, so wire bytes keep the same ratio)"
)

# The full profile of the baseline and of the cross-method benchmark (reproduce/compare): the
# standard CIFAR-10 ResNet-20 schedule (lr x0.1 at epochs 80 and 120 of 160)
CIFAR10_RESNET20 = Profile(
    (
        "dataset=cifar10",
        "model=resnet20",
        "nproc=8",
        "batch_size=128",
        "epochs=160",
        "optim.lr=0.1",
        "optim.momentum=0.9",
        "optim.weight_decay=0.0001",
        "optim.schedule=multistep",
        "optim.milestones=80,120",
        "eval_every=500",
    ),
    seeds=(0, 1, 2),
    note="CIFAR-10 ResNet-20, 8 ranks x batch 128, 160 epochs; needs --set data_dir",
)

register(
    Recipe(
        paper="baseline",
        key="Periods",
        title="Local SGD at averaging periods H = 4 and 16 against all-reduce SGD",
        rows=(
            Row(ALLREDUCE, "allreduce_sgd"),
            # buffers: BatchNorm statistics are averaged with the parameters (none in the MLP)
            Row(LOCAL4, "local_sgd", ("algorithm.period=4", "algorithm.buffers=true")),
            Row(LOCAL16, "local_sgd", ("algorithm.period=16", "algorithm.buffers=true")),
        ),
        claims=(
            Claim(
                "bytes_sent",
                LOCAL4,
                "<=",
                other=ALLREDUCE,
                scale=0.25,
                tolerance=1.0,
                source=BY_CONSTRUCTION,
                profiles=("smoke", "real"),
            ),
            Claim(
                "bytes_sent",
                LOCAL16,
                "<=",
                other=ALLREDUCE,
                scale=1 / 16,
                tolerance=1.0,
                source=BY_CONSTRUCTION,
                profiles=("smoke", "real"),
            ),
            # in simulated time: each run's trace replayed on the wan preset (100 Mbit/s, 20 ms)
            Claim(
                "network_seconds_to_target@wan",
                LOCAL4,
                "<=",
                other=ALLREDUCE,
                source="expectation: averaging every H steps reaches the target sooner where "
                "the network is slow (simulated: traces replayed on the wan preset; "
                "reproduce/baseline/NOTES.md#claims)",
            ),
            Claim(
                "test_accuracy",
                LOCAL4,
                ">=",
                other=ALLREDUCE,
                tolerance=0.02,
                source="expectation: H=4 costs at most 2 points (Stich 2019, Lin et al. 2020; "
                "reproduce/baseline/NOTES.md#claims)",
            ),
            Claim(
                "test_accuracy",
                LOCAL16,
                ">=",
                other=ALLREDUCE,
                tolerance=0.05,
                source="expectation: H=16 costs at most 5 points "
                "(reproduce/baseline/NOTES.md#claims)",
            ),
        ),
        profiles={
            "smoke": Profile(
                ("dataset=digits", "model=mlp", "nproc=4", "steps=300", "eval_every=50"),
                seeds=(0, 1),
                note="scikit-learn digits, MLP, 4 gloo ranks, 300 steps, 2 seeds",
            ),
            "real": Profile(
                (
                    "dataset=fashion_mnist",
                    "model=cnn2",
                    "nproc=4",
                    "batch_size=64",
                    "epochs=10",
                    "optim.lr=0.05",
                    "optim.momentum=0.9",
                    "optim.schedule=multistep",
                    "optim.milestones=5,7.5",
                    "eval_every=500",
                ),
                seeds=(0, 1, 2),
                note="Fashion-MNIST, CNN-2, 4 ranks x batch 64 (EventGraD's MNIST setup; the "
                "full profile's schedule; NOTES.md#real), momentum SGD lr 0.05 (x0.1 at half and "
                "three quarters), 10 epochs (2,340 steps), 3 seeds",
            ),
            "full": CIFAR10_RESNET20,
        },
        command="suite reproduce baseline [--profile real | --profile full --set data_dir=DIR]",
        runtime="smoke: about 1 minute on 2 CPU cores; real: about 16 minutes on 2 CPU cores (9 "
        "runs); full: hours on CPU",
        deviations="No paper: the claims are our expectations, written before the runs.",
        reference=ALLREDUCE,
        spaces={
            "period": Space(
                LOCAL4,
                lambda t: [f"algorithm.period={t.suggest_int('period', 1, 64, log=True)}"],
                objectives=(("test_accuracy", "maximize"), ("wire_bytes", "minimize")),
                description="averaging period H: accuracy against wire bytes (Pareto)",
            ),
            "lr": Space(
                LOCAL4,
                lambda t: [f"optim.lr={t.suggest_float('lr', 0.005, 0.5, log=True)}"],
                description="learning rate of Local SGD (H=4): accuracy, pruned at evaluations",
            ),
        },
    )
)
