"""The ``suite`` command line.

Exit codes: 0 success; 1 the run failed (a rank crashed or hung: its traceback is printed; or
it diverged: a non-finite loss or parameter, where and on which rank is printed);
2 bad input (unknown name or key, bad value, missing data: the message lists the valid choices);
130 interrupted: Ctrl-C (SIGINT), SIGTERM or SIGHUP (a closed terminal), for every command. The
signal stops what the command started (ranks; the ``suite run`` children of ``reproduce`` and
``sweep``, which also die with their driver if it is killed -9) and ends their MLflow runs FAILED
(a sweep's parent run KILLED). Every failure path ends the MLflow run as FAILED.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import hashlib
import json
import math
import os
import posixpath
import re
import select
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from suite.config import (
    RunConfig,
    apply_overrides,
    describe_type,
    flatten,
    precheck,
    settable_keys,
)
from suite.divergence import Diverged, json_safe
from suite.errors import ConfigError, DataNotFoundError, did_you_mean, unwritable_folder
from suite.preflight import preflight, rank_under_torchrun
from suite.registry import RECIPES, REGISTRIES, UnknownNameError
from suite.targets import check_paper, check_target, resolve_target

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer its reader left

# Keys every `--json` line carries (issue contract); more follow.
JSON_KEYS = (
    "target",
    "algorithm",
    "world_size",
    "steps",
    "num_params",
    "test_accuracy",
    "train_loss",
    "bytes_sent",
    "wire_bytes",
    "messages",
    "wall_seconds",
    "run_id",
)


class UsageError(Exception):
    """Bad input found by the CLI itself."""


def _overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` and the flags that stand for config keys, as ``key=value`` overrides."""
    overrides = list(args.set or [])
    for flag in ("nproc", "seed", "steps", "epochs", "data_dir", "device"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{flag}={value}")
    if args.steps is not None and args.epochs is None:
        overrides.append("epochs=0")  # an explicit step count beats a recipe's epochs
    return overrides


def build_config(args: argparse.Namespace) -> tuple[RunConfig, str]:
    cfg, paper = resolve_target(args.target)
    return apply_overrides(cfg, _overrides(args)), paper


def quick_check(args: argparse.Namespace, world_size: int | None = None) -> RunConfig:
    """Names, keys and the run's own values checked before torch is imported (exit 2 at
    once); returns the config as far as that check knows it (see config.precheck)."""
    check_target(args.target)
    extra = [] if world_size is None else [f"nproc={world_size}"]
    return precheck(args.target, [*_overrides(args), *extra])


def _is_stand_in(target: str, algorithm: str) -> bool:
    """Whether ``target`` runs a stand-in (our documented substitute for a rule the paper did
    not let us build; suite.names.STAND_INS, readable before torch loads)."""
    from suite import names

    return bool({target, algorithm} & set(names.STAND_INS))


def _labelled(target: str, algorithm: str) -> str:
    """``target``, marked "(stand-in)" when it runs one."""
    return f"{target} (stand-in)" if _is_stand_in(target, algorithm) else target


def _plan(target: str, cfg: RunConfig, torchrun: bool) -> str:
    """The first line ``suite run`` prints, before its heavy imports."""
    where = "this torchrun job's" if torchrun else "local"
    return (
        f"{_labelled(target, cfg.algorithm.name)}: starting {cfg.nproc} {where} rank(s), "
        f"{cfg.dataset.name}/{cfg.model.name}, {cfg.length} ..."
    )


# ---------------------------------------------------------------------------------------------
# suite run


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def format_summary(summary: dict[str, Any], uri: str | None, experiment: str) -> str:
    acc = summary.get("test_accuracy")
    lines = [
        f"{_labelled(summary['target'], summary['algorithm'])}: {summary['algorithm']} on "
        f"{summary['dataset']}/{summary['model']},"
        f" {summary['world_size']} ranks, {summary['steps']} steps ({summary['epochs']:.2f}"
        f" epochs), {summary['num_params']:,} parameters",
        f"test accuracy (averaged model) {acc:.4f}, train loss {summary['train_loss']:.4f}"
        if acc is not None
        else f"train loss {summary['train_loss']:.4f}",
        "communication, algorithm traffic (harness bookkeeping excluded):",
        f"  {'rank':>4}  {'bytes sent':>14}  {'bytes recv':>14}  {'messages':>9}  {'comm s':>8}"
        f"  {'wire bytes':>14}",
    ]
    for r in summary["per_rank"]:
        lines.append(
            f"  {r['rank']:>4}  {r['bytes_sent']:>14,}  {r['bytes_recv']:>14,}"
            f"  {r['messages']:>9,}  {r['comm_seconds']:>8.3f}  {r['wire_bytes']:>14,}"
        )
    lines.append(
        f"  {'all':>4}  {summary['bytes_sent']:>14,}  {summary['bytes_recv']:>14,}"
        f"  {summary['messages']:>9,}  {'':>8}  {summary['wire_bytes']:>14,}"
        f"   ({_fmt_bytes(summary['bytes_sent'])} payload, "
        f"{_fmt_bytes(summary['wire_bytes'])} on the wire)"
    )
    lines.append(f"wall time {summary['wall_seconds']:.1f} s")
    if summary.get("network_seconds") is not None:
        text = (
            f"network model on {summary['network']}: {summary['network_seconds']:.3f} s,"
            f" {summary['network_seconds_per_step'] * 1e3:.2f} ms/step"
        )
        if "network_seconds_to_target" in summary:
            text += f", {summary['network_seconds_to_target']:.3f} s to the target"
        lines.append(text + " (simulated: the run's trace replayed, suite.netmodel)")
    if summary.get("reference_step_ms") is not None:  # what the simulated time's compute rests on
        lines.append(
            f"host speed: reference step {summary['reference_step_ms']:.3f} ms "
            "(suite.hostspeed; compare simulated times across hosts or days only at like speed)"
        )
    if summary.get("emulate"):
        from suite.emulate import describe

        lines.append(describe(summary))
        if "emulated_model_seconds_per_step" in summary:
            measured = summary["train_seconds"] / max(summary["steps"], 1)
            lines.append(
                f"  network model on {summary['emulate']}:"
                f" {summary['emulated_model_seconds_per_step'] * 1e3:.2f} ms/step predicted,"
                f" {measured * 1e3:.2f} ms/step measured (training time / steps)"
            )
    if summary.get("run_id"):
        lines.append(
            f"MLflow run {summary['run_id']} in experiment {experiment!r} at {uri}"
            " (browse: make ui)"
        )
    return "\n".join(lines)


def _emulation(args: argparse.Namespace, cfg: RunConfig, torchrun_rank: int | None) -> Any:
    """The run's shaped network (a suite.emulate.Emulation) for --emulate, or None; a spec
    this host cannot emulate is a ConfigError, found before any rank starts."""
    text = getattr(args, "emulate", None)
    if text is None:
        return None
    from suite import emulate
    from suite.launcher import resolve_device
    from suite.network import parse_network

    spec = parse_network(text)
    device = cfg.device if cfg.device == "cuda" else resolve_device(cfg.device, cfg.nproc)
    emulate.check(spec, cfg.nproc, device=device, torchrun=torchrun_rank is not None)
    return emulate.Emulation(spec)


def _emulated_model(summary: dict[str, Any], artifacts: Any, spec: Any) -> dict[str, float]:
    """What the network model predicts for the emulated network itself, from this run's trace:
    beside the measured seconds, a check of the model against real links (see
    :func:`suite.netmodel.emulated_network`); harness ops included, as the training time
    measured includes them."""
    from suite import netmodel, trace

    network = netmodel.emulated_network(spec, summary)
    try:
        timeline = netmodel.replay(
            trace.load(artifacts[trace.ARTIFACT]), network, steps=summary["steps"], harness=True
        )
    except (KeyError, ValueError) as err:
        _say(f"warning: network model on the emulated network: {err}")
        return {}
    seconds = timeline.network_seconds
    return {
        "emulated_model_seconds": seconds,
        "emulated_model_seconds_per_step": seconds / max(timeline.steps, 1),
    }


def cmd_run(args: argparse.Namespace) -> int:
    from suite.tracking import RunWriter, run_tags

    torchrun_rank = rank_under_torchrun()
    _parse_tags(args.tag)  # bad input fails before anything starts
    world = int(os.environ["WORLD_SIZE"]) if torchrun_rank is not None else None
    plan = quick_check(args, world)  # typos exit 2 here, before torch and MLflow load
    if args.no_track:
        uri = None
    elif torchrun_rank:  # only rank 0 writes: the store is its host's to check
        from suite.tracking import tracking_uri

        uri = tracking_uri(args.tracking_uri)
    else:
        uri = _checked_uri(args.tracking_uri)
    if not args.quiet and not torchrun_rank:
        _say(_plan(args.target, plan, torchrun_rank is not None))
    # The MLflow writer starts first: its imports then overlap the job's own start-up.
    writer = RunWriter().start() if uri is not None and not torchrun_rank else None
    try:
        cfg, paper = build_config(args)
        if torchrun_rank is not None:
            cfg = apply_overrides(cfg, {"nproc": int(os.environ["WORLD_SIZE"])})
        emulation = _emulation(args, cfg, torchrun_rank)
        preflight(cfg)
        checkpoint = _checkpointing(args, cfg, uri, torchrun_rank)
    except BaseException:
        if writer is not None:
            writer.discard()  # bad input: no run is created
        raise
    from suite import launcher
    from suite.loop import Job, run_worker

    experiment = args.experiment or paper
    prune = None
    if args.optuna_trial:
        from suite.sweep import OptunaPruner

        prune = OptunaPruner.from_arg(args.optuna_trial)
        import optuna  # noqa: F401  (imported once here; forked ranks inherit it)
    resume = getattr(args, "resume", None)
    if writer is not None and resume is not None:  # continue the same MLflow run
        tags = {"suite.resumed_from_step": str(resume.manifest["step"])}
        writer.open(uri, experiment, None, params={}, tags=tags, run_id=resume.run_id)
    elif writer is not None:
        where = "torchrun" if torchrun_rank is not None else "local"
        extra_tags = _launch_tags(torchrun_rank)
        extra_tags.update(_parse_tags(args.tag))
        if emulation is not None:
            extra_tags["suite.emulate"] = str(emulation.spec)
        if _is_stand_in(args.target, cfg.algorithm.name):
            extra_tags["suite.stand_in"] = "true"  # filterable: tags.`suite.stand_in` = 'true'
        if checkpoint is not None:
            extra_tags["suite.checkpoint_dir"] = checkpoint.directory
        writer.open(
            uri,
            experiment,
            args.run_name or f"{args.target}-n{cfg.nproc}-s{cfg.seed}-{where}",
            params={**flatten(cfg), "target": args.target},
            tags=run_tags(args.target, paper, cfg.nproc, extra_tags),
            dataset=_dataset_input(cfg),
        )
    job = Job(
        cfg, args.target, paper, writer.sink if writer else None, not args.quiet, prune, checkpoint
    )
    start = time.perf_counter()
    try:
        if torchrun_rank is not None:
            launcher.init_from_env(args.hang_timeout)
            try:
                result = run_worker(job)
            except BaseException as err:  # for rank 0's error.txt (and its diverged tags)
                launcher.publish_error(
                    traceback.format_exc(), err if isinstance(err, Diverged) else None
                )
                raise
        else:
            device = launcher.resolve_device(cfg.device, cfg.nproc)
            results = launcher.launch(
                run_worker, cfg.nproc, (job,), device=device, hang_timeout=args.hang_timeout,
                emulate=emulation,
            )  # fmt: skip
            result = results[0]
    except launcher.RankFailure as failure:
        if isinstance(failure.error, Diverged):
            return _diverged(failure.error, failure.report(), args, cfg, writer, start)
        print(failure.report(), file=sys.stderr, end="")
        _end_failed(writer, failure.report())
        _resume_hint(writer, checkpoint)
        return EXIT_FAILED
    except KeyboardInterrupt as interrupt:
        what = f"interrupted ({interrupt.args[0] if interrupt.args else 'SIGINT'})"
        _say(f"\n{what}: all ranks stopped")
        code = None
        if torchrun_rank is not None and writer is not None:
            # torchrun stops every worker with SIGTERM when one dies: the run failed with
            # that rank's traceback, which it published before it went
            code = _end_torchrun_failure(what, args, cfg, writer, start, wait=1.0)
        else:
            _end_failed(writer, what)
        _resume_hint(writer, checkpoint)
        return EXIT_INTERRUPTED if code is None else code
    except Diverged as err:  # this rank's own, under torchrun
        return _diverged(err, traceback.format_exc(), args, cfg, writer, start)
    except BaseException:  # rank 0 under torchrun raised: the run fails with the tracebacks
        if writer is not None:  # of the rank that failed first, then rank 0's own
            code = _end_torchrun_failure(traceback.format_exc(), args, cfg, writer, start)
            if code is not None:
                return code
        raise
    if result is None:  # a non-zero rank under torchrun
        return 0
    with _recording_result():  # a stop signal from here on waits: the run is done
        return _finish_run(args, uri, experiment, result, start, emulation, checkpoint, writer)


def _finish_run(
    args: argparse.Namespace,
    uri: str | None,
    experiment: str,
    result: tuple[dict[str, Any], Any],
    start: float,
    emulation: Any,
    checkpoint: Any,
    writer: Any,
) -> int:
    """After training: complete rank 0's summary, record it (MLflow, ``suite-summaries/``),
    spend the checkpoints and print it; the command's exit code."""
    from suite import launcher

    torchrun_rank = rank_under_torchrun()
    summary, artifacts = result
    summary["wall_seconds"] = time.perf_counter() - start
    # the host's speed beside the compute it measured (simulated times rest on it): timed now,
    # with the ranks done, not during training, whose compute it would slow
    from suite.hostspeed import reference_step_ms

    summary["reference_step_ms"] = reference_step_ms()
    if emulation is not None:
        summary.update(emulation.summary())
        summary.update(_emulated_model(summary, artifacts, emulation.spec))
    hosts = launcher.torchrun_hosts() if torchrun_rank is not None else {}
    failed = writer is not None and not _end_finished(writer, uri, summary, artifacts, hosts)
    if checkpoint is not None and not failed:  # the run ended as it should: checkpoints spent
        from suite.checkpoint import remove

        remove(checkpoint.directory)
    text = format_summary(summary, uri, experiment)
    if args.json:
        if not args.quiet:
            print(text, file=sys.stderr)
        line = {k: summary.get(k) for k in JSON_KEYS}
        line.update({k: v for k, v in summary.items() if k not in line})
        _print_json(line)
    else:
        print(text)
    if _received:
        name = signal.Signals(_received[0]).name
        _say(f"{name} came after training ended: the run was recorded first")
    return EXIT_FAILED if failed else 0


def _end_torchrun_failure(
    own: str,
    args: argparse.Namespace,
    cfg: RunConfig,
    writer: Any,
    start: float,
    wait: float = 3.0,
) -> int | None:
    """Rank 0 under torchrun, its job failed: end the run FAILED with the tracebacks other
    ranks published (then ``own``) and every rank's host. A divergence another rank published
    ends it as one (:func:`_diverged`, whose exit code is returned); else None."""
    from suite import launcher

    error = launcher.peer_errors(own, wait=wait)
    diverged, hosts = launcher.peer_divergence(), launcher.torchrun_hosts(wait=0.5)
    if diverged is not None:  # another rank's loss: a result, tagged as such
        return _diverged(diverged, error, args, cfg, writer, start, hosts)
    _end_failed(writer, error, hosts)
    return None


def _launch_tags(torchrun_rank: int | None) -> dict[str, str]:
    """Where the run's ranks ran: local (one host) or torchrun (nodes, rendezvous id ...)."""
    if torchrun_rank is not None:
        from suite.launcher import torchrun_tags

        return torchrun_tags()
    import socket

    host = socket.gethostname()
    return {"suite.launcher": "local", "suite.nodes": "1", "suite.hosts": host}


def _dataset_input(cfg: RunConfig) -> dict[str, str]:
    """The run's dataset for MLflow's inputs: its name, a digest of its config (name and
    knobs: the same digest, the same data) and where it comes from."""
    items = {k: v for k, v in flatten(cfg).items() if k == "dataset" or k.startswith("dataset.")}
    digest = hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()
    source = f"suite dataset {items['dataset']}" + (f" from {cfg.data_dir}" if cfg.data_dir else "")
    return {"name": str(items["dataset"]), "digest": digest[:16], "source": source}


def _end_finished(
    writer: Any, uri: str, summary: dict[str, Any], artifacts: Any, tags: dict[str, str]
) -> bool:
    """End the run with rank 0's summary (FINISHED, or KILLED when pruned); False if MLflow
    could not record it. Either way the summary is also kept in ``suite-summaries/`` next to
    the store, written before MLflow is asked and again with the run id."""
    writer.poll()  # the run id, if the writer has created the run
    summary["run_id"] = writer.run_id
    path = _keep_summary(uri, summary)
    ok = True
    try:
        summary["run_id"] = writer.end(
            "KILLED" if summary.get("pruned") else "FINISHED", summary, artifacts, tags=tags
        )
    except RuntimeError as err:
        _say(f"error: training finished but {err}")
        ok = False
    path = _keep_summary(uri, summary, path)
    if path is not None:
        _say(f"summary kept in {path}")
    return ok


def _keep_summary(uri: str, summary: dict[str, Any], previous: Any = None) -> Any:
    """:func:`suite.tracking.keep_summary`, or None with a warning if the disk refuses it (full,
    or made read-only mid-run): the summary still reaches MLflow and the terminal."""
    from suite.tracking import keep_summary

    try:
        return keep_summary(uri, summary, previous)
    except OSError as err:
        _say(f"warning: could not keep the summary beside the store: {err}")
        return previous


def _say(text: str) -> None:
    """A message on stderr that a closed terminal (SIGHUP) cannot turn into a crash."""
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)


def _print_json(line: dict[str, Any]) -> None:
    """The --json line: strict JSON, non-finite numbers as null (NaN is not JSON)."""
    print(json.dumps(json_safe(line), allow_nan=False), flush=True)


def _diverged(
    err: Diverged,
    details: str,
    args: argparse.Namespace,
    cfg: RunConfig,
    writer: Any,
    start: float,
    tags: dict[str, str] | None = None,
) -> int:
    """A rank's loss or parameters went non-finite (a :class:`Diverged`): a result of the
    config, not a crash, so no traceback. The run ends FAILED with ``suite.diverged`` tags, and
    --json still prints one line saying where it diverged."""
    print(
        f"error: {err}; all ranks stopped. The optimizer blew up: try a lower optim.lr "
        f"(now {cfg.optim.lr:g}), a warm-up or a smaller optim.momentum",
        file=sys.stderr,
    )
    tags = {
        **(tags or {}),
        "suite.diverged": "true",
        "suite.diverged_step": str(err.step),
        "suite.diverged_rank": str(err.rank),
    }
    run_id = _end_failed(writer, f"{err}\n\n{details}", tags)
    if args.json and not rank_under_torchrun():
        line = {k: None for k in JSON_KEYS}
        line.update(target=args.target, algorithm=cfg.algorithm.name, world_size=cfg.nproc)
        line.update(wall_seconds=time.perf_counter() - start, run_id=run_id, diverged=True)
        line.update(diverged_step=err.step, diverged_rank=err.rank, diverged_what=err.what)
        _print_json(line)
    return EXIT_FAILED


# MLflow's rule for tag keys (mlflow.utils.validation, not imported here: --tag is checked
# before MLflow loads), which its store enforces only when the run is created, after training.
_TAG_KEY = re.compile(r"[/\w.\- :]{1,250}")
_TAG_VALUE_MAX = 8000


def _parse_tags(items: Sequence[str] | None) -> dict[str, str]:
    tags = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {item!r}: expected KEY=VALUE")
        if not _TAG_KEY.fullmatch(key) or posixpath.normpath(key) != key:
            raise UsageError(
                f"--tag {item!r}: MLflow takes tag keys of up to 250 letters, digits, '_', '-', "
                "'.', ' ', ':' and '/', not a path that normalises to another (no '//', "
                "'./', leading '/')"
            )
        if key == "mlflow.runName":
            raise UsageError(f"--tag {item!r}: the run's name is set by --run-name NAME")
        if len(value) > _TAG_VALUE_MAX:
            raise UsageError(f"--tag {key}=...: a value of {len(value)} characters; at most 8000")
        tags[key] = value
    return tags


# ---------------------------------------------------------------------------------------------
# Checkpoints and suite resume


@dataclass(frozen=True)
class _Resume:
    """What ``suite resume`` hands ``cmd_run``: the run to continue and its checkpoint."""

    run_id: str | None
    directory: str
    manifest: dict[str, Any]


def _checkpoint_every(text: str) -> int | None:
    """--checkpoint-every: "auto" (None) or a number of steps >= 0 (0: never)."""
    if text == "auto":
        return None
    try:
        steps = int(text)
    except ValueError:
        steps = -1
    if steps < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a number of steps >= 0, got {text!r}")
    return steps


def _checkpointing(
    args: argparse.Namespace, cfg: RunConfig, uri: str | None, torchrun_rank: int | None
) -> Any:
    """Where and how often this job checkpoints (a suite.checkpoint.Checkpointing), or None."""
    from suite.checkpoint import Checkpointing, is_held, new_directory, read_manifest, release

    resume: _Resume | None = getattr(args, "resume", None)
    if resume is not None:
        saved = json.dumps(resume.manifest["config"], sort_keys=True)
        if json.dumps(flatten(cfg), sort_keys=True) != saved:
            raise UsageError(
                f"the checkpoint in {resume.directory} was written by another config than "
                "the run's; refusing to resume"
            )
        checkpoint = Checkpointing(resume.directory, resume.manifest["every"], resume=True)
        return _held(checkpoint, torchrun_rank)
    every = getattr(args, "checkpoint_every", 0)
    directory = getattr(args, "checkpoint_dir", None)
    if every == 0:
        return None
    if directory:
        path = Path(directory).resolve()
        why = unwritable_folder(path)
        if why is not None:  # else a rank's traceback at its first save
            raise UsageError(f"--checkpoint-dir {path}: {why}")
        fresh = not is_held(path)
        held = _held(Checkpointing(str(path), every), torchrun_rank)
        # another run's checkpoint: this run's own saves, and its cleanup at the end, would
        # delete it (checked once held, so no job can write one between the check and the run)
        other = read_manifest(path)
        if other is not None:
            if fresh:
                release(path)
            raise UsageError(
                f"--checkpoint-dir {path} holds the checkpoint of another run (after step "
                f"{other.get('step')}), which this run would delete; valid: continue that run "
                f"with suite resume --checkpoint-dir {path}, name an empty folder, or delete "
                "that one first"
            )
        return held
    if uri is None or torchrun_rank is not None:
        if every is None:
            return None  # auto, and no store to keep them next to: none
        raise UsageError(
            "--checkpoint-every needs --checkpoint-dir DIR with --no-track or under torchrun "
            "(every rank must name the same folder)"
        )
    return Checkpointing(new_directory(uri), every)


def _held(checkpoint: Any, torchrun_rank: int | None) -> Any:
    """``checkpoint``, its folder claimed by this process for the job's life (a folder a new
    run makes for itself is its own already). Not under torchrun: every rank names the folder,
    and the launcher that could hold it for all is torchrun's."""
    from suite.checkpoint import hold

    if torchrun_rank is not None:
        return checkpoint
    try:
        hold(checkpoint.directory)  # the descriptor stays open until the process exits
    except ValueError as err:
        raise UsageError(str(err)) from None
    return checkpoint


def _resume_hint(writer: Any, checkpoint: Any) -> None:
    """After a failure: say how to continue, if a checkpoint was written."""
    from suite.checkpoint import read_manifest

    manifest = read_manifest(checkpoint.directory if checkpoint is not None else None)
    if manifest is None:
        return
    run_id = getattr(writer, "run_id", None) if writer is not None else None
    how = f"{run_id}" if run_id else f"--checkpoint-dir {checkpoint.directory}"
    print(
        f"checkpoint after step {manifest['step']} kept in {checkpoint.directory}; "
        f"continue with: suite resume {how}",
        file=sys.stderr,
    )


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a FAILED or KILLED run from its latest checkpoint (into the same MLflow run)."""
    from suite.checkpoint import read_manifest

    if args.run_id is None:  # an untracked run: everything is in its checkpoint folder
        if not args.checkpoint_dir:
            raise UsageError(
                "give RUN_ID (a tracked run) or --checkpoint-dir DIR (an untracked one)"
            )
        directory = str(Path(args.checkpoint_dir).resolve())
        manifest = read_manifest(directory)
        if manifest is None:
            raise UsageError(f"no checkpoint in {directory}")
        uri = experiment = None
        target, flat = manifest.get("target"), manifest.get("config", {})
        if target is None:
            raise UsageError(f"the checkpoint manifest in {directory} names no target")
    else:
        uri = _checked_uri(args.tracking_uri)
        run, experiment = _resumable_run(uri, args.run_id)
        directory = args.checkpoint_dir or run.data.tags.get("suite.checkpoint_dir")
        manifest = read_manifest(directory)
        if manifest is None:
            where = f" (looked in {directory})" if directory else ""
            raise UsageError(f"run {args.run_id} has no checkpoint to resume from{where}")
        target = run.data.tags.get("target") or run.data.params.get("target", "")
        flat = {k: v for k, v in run.data.params.items() if k != "target"}
    missing = [key for key in ("step", "every", "config") if key not in manifest]
    if missing:
        raise UsageError(
            f"the checkpoint manifest in {directory} has no {', '.join(missing)}: a damaged "
            "one, or not written by a suite run; refusing to resume"
        )
    run_args = argparse.Namespace(
        target=target,
        set=[f"{key}={_as_text(value)}" for key, value in flat.items()],
        nproc=None,
        seed=None,
        steps=None,
        epochs=None,
        data_dir=None,
        device=None,
        json=args.json,
        no_track=uri is None,
        tracking_uri=uri,
        experiment=experiment,
        run_name=None,
        hang_timeout=args.hang_timeout,
        quiet=args.quiet,
        tag=None,
        optuna_trial=None,
        resume=_Resume(args.run_id, directory, manifest),
    )
    print(f"resuming {target} after step {manifest['step']} from {directory}", file=sys.stderr)
    return cmd_run(run_args)


def _resumable_run(uri: str, run_id: str) -> tuple[Any, str]:
    """(the MLflow run, its experiment's name) if it can be resumed; else UsageError why."""
    from suite.tracking import open_client

    client = open_client(_existing_store(uri))
    try:
        run = client.get_run(run_id)
    except Exception:  # MlflowException: no such run
        raise UsageError(f"no run {run_id!r} in {uri}") from None
    status = run.info.status
    if status == "FINISHED":
        raise UsageError(f"run {run_id} is FINISHED; nothing to resume")
    if status not in ("FAILED", "KILLED"):
        raise UsageError(
            f"run {run_id} is {status}; only a FAILED or KILLED run can be resumed (a run whose "
            "process is gone while it shows RUNNING is marked FAILED when the store is next opened)"
        )
    if run.data.tags.get("suite.diverged") == "true":
        raise UsageError(
            f"run {run_id} diverged (a non-finite loss or parameter); resumed, the same config "
            "would diverge again"
        )
    return run, client.get_experiment(run.info.experiment_id).name


def _as_text(value: Any) -> str:
    """A config value as ``--set`` parses it back (MLflow params are strings already)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _end_failed(writer: Any, error: str, tags: dict[str, str] | None = None) -> str | None:
    """End the job's MLflow run FAILED, holding the error (and ``tags``); returns its id. A
    tracking error must not hide the run's own failure, so it is only reported."""
    if writer is None:
        return None
    try:
        run_id = writer.end("FAILED", artifacts={"error.txt": error}, tags=tags)
    except RuntimeError as err:
        _say(f"warning: could not record the failed MLflow run: {err}")
        return None
    if run_id:
        _say(f"MLflow run {run_id} marked FAILED (error.txt holds the error)")
    return run_id


# ---------------------------------------------------------------------------------------------
# suite list / show / data


def _kind(name: str) -> str:
    kind = name if name in REGISTRIES else name + "s"
    if kind not in REGISTRIES:
        raise UsageError(
            f"unknown kind {name!r}{did_you_mean(name, REGISTRIES)}; valid choices: "
            f"{', '.join(REGISTRIES)}"
        )
    return kind


def cmd_list(args: argparse.Namespace) -> int:
    kinds = [_kind(args.kind)] if args.kind else list(REGISTRIES)
    for kind in kinds:
        entries = REGISTRIES[kind].entries(args.pattern)
        if len(kinds) > 1:
            print(f"{kind}:")
        if not entries:
            print("  (none)")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            paper = f"[{e.paper}] " if e.paper else ""
            print(f"  {e.name:<{width}}  {paper}{e.label}")
    return 0


def _config_advice(algorithm: str) -> list[str]:
    """The docstring of ``algorithm``'s config dataclass (what each knob does, when to use the
    method), as written; none for a config without one (dataclasses make up a signature)."""
    import inspect

    config = REGISTRIES["algorithms"].get(algorithm).config
    doc = inspect.cleandoc(config.__doc__ or "") if config is not None else ""
    return [] if not doc or doc.startswith(f"{config.__name__}(") else doc.splitlines()


def cmd_show(args: argparse.Namespace) -> int:
    """Print the resolved config of a target: its algorithm's tuning advice (its config's
    docstring), then every key --set accepts, its value and type."""
    args.nproc = args.seed = args.steps = args.epochs = args.data_dir = args.device = None
    quick_check(args)
    cfg, paper = build_config(args)
    types = settable_keys(cfg)
    flat = flatten(cfg)
    width = max(len(k) for k in flat)
    label = _labelled(args.target, cfg.algorithm.name)
    print(f"# {label} (paper: {paper}); set any key with --set KEY=VALUE")
    advice = _config_advice(cfg.algorithm.name)
    for line in ["", *advice, ""] if advice else []:
        print(f"# {line}".rstrip())
    for key, value in flat.items():
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key:<{width}} = {shown!s:<16} # {describe_type(types[key])}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a stored run's trace (RUN_ID, or a trace.npz.b64 file) on networks."""
    from suite import netmodel
    from suite.network import PRESETS, parse_network

    networks = [parse_network(text) for text in args.network or PRESETS]  # ConfigError: exit 2
    if not (math.isfinite(args.compute_scale) and args.compute_scale >= 0):
        raise UsageError(f"--compute-scale must be finite and >= 0, got {args.compute_scale}")
    if args.host_speed is not None and not (math.isfinite(args.host_speed) and args.host_speed > 0):
        raise UsageError(f"--host-speed must be finite and > 0 (ms), got {args.host_speed}")
    tr, steps, to_target, run_ms = _stored_trace(args.run, args.tracking_uri)
    scale = args.compute_scale
    if args.host_speed is not None:  # the compute as a host of that speed would have run it
        if run_ms is None:
            raise UsageError(
                f"--host-speed needs the run's own host speed, and {args.run} has none "
                "(a trace file, or a run made before suite.hostspeed): use --compute-scale"
            )
        scale *= args.host_speed / run_ms
    rows = []
    for spec in networks:
        figures = netmodel.network_seconds(
            tr, spec, steps=steps, steps_to_target=to_target, compute_scale=scale,
            harness=args.harness,
        )  # fmt: skip
        rows.append({"network": str(spec), **figures, "compute_scale": scale})
    if args.json:
        for row in rows:
            _print_json(row)
        return 0
    if run_ms is not None:
        print(
            f"the run's host speed: reference step {run_ms:.3f} ms (suite.hostspeed); "
            f"compute replayed x{scale:.3g}"
        )
    print(f"{'network':<16} {'seconds':>10} {'ms/step':>10} {'s to target':>12}")
    for row in rows:
        target = row.get("network_seconds_to_target")
        print(
            f"{row['network']:<16} {row['network_seconds']:>10.3f}"
            f" {row['network_seconds_per_step'] * 1e3:>10.2f}"
            f" {'' if target is None else f'{target:.3f}':>12}"
        )
    return 0


def _stored_trace(
    run: str, explicit_uri: str | None
) -> tuple[Any, int | None, float | None, float | None]:
    """The trace of a trace file or a tracked run, with the run's steps, steps to target and
    host speed (``reference_step_ms``; None for a trace file or where not recorded)."""
    from suite import trace

    if os.path.isfile(run):
        try:
            return trace.load(run), None, None, None
        except (ValueError, OSError, KeyError) as err:
            raise UsageError(f"{run} is not a trace artifact ({trace.ARTIFACT}): {err}") from None
    from suite.tracking import open_client

    uri = _checked_uri(explicit_uri, writes=False)
    try:
        _existing_store(uri)
    except UsageError as err:
        raise UsageError(f"{run!r} is not a trace file, and {err}") from None
    client = open_client(uri)
    try:
        stored = client.get_run(run)
    except Exception:  # MlflowException: no such run
        raise UsageError(f"no run or trace file {run!r} (store {uri})") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run, trace.ARTIFACT, tmp)
        except Exception:
            raise UsageError(f"run {run} has no {trace.ARTIFACT} (stored before traces)") from None
        tr = trace.load(path)
    metrics = stored.data.metrics
    steps = metrics.get("final.steps")
    return (
        tr,
        None if steps is None else int(steps),
        metrics.get("final.steps_to_target"),
        metrics.get("final.reference_step_ms"),
    )


def cmd_reproduce(args: argparse.Namespace) -> int:
    check_paper(args.paper)
    precheck(None, args.set or ())
    from suite.reproduce import reproduce

    return reproduce(
        args.paper,
        profile=args.profile,
        uri=_checked_uri(args.tracking_uri),
        seeds=args.seeds,
        force=args.force,
        extra=args.set or (),
        out_dir=Path(args.out) if args.out else None,
        reuse_any_code=args.reuse_any_code,
    )


def cmd_report(args: argparse.Namespace) -> int:
    check_paper(args.paper)  # an unknown paper is bad input: exit 2 with the valid ones
    from reports.builder import build_report
    from reports.render import check_out_dir
    from suite.recipes import recipes_of
    from suite.reproduce import REPORTS_DIR
    from suite.tracking import open_client

    recipes_of(args.paper)
    out = Path(args.out) if args.out else REPORTS_DIR / args.paper
    check_out_dir(out)
    uri = _existing_store(_checked_uri(args.tracking_uri, writes=False))
    experiment = args.experiment or args.paper
    client = open_client(uri)
    if client.get_experiment_by_name(experiment) is None:  # a typo would write an empty report
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise ConfigError(
            f"no experiment {experiment!r} in {uri}"
            + did_you_mean(experiment, names)
            + f"; valid choices: {', '.join(names) or 'none (nothing was tracked there)'}"
        )
    report = build_report(args.paper, uri, out, experiment=args.experiment)
    print(f"report: {report.out_dir / 'README.md'} (and report.html)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from suite import names

    if args.recipe not in names.RECIPES:
        raise ConfigError(
            str(UnknownNameError("recipe", args.recipe, list(names.RECIPES)))
            + "; `suite list recipes` describes them"
        )
    precheck(None, args.set or ())
    from suite.sweep import sweep

    recipe = RECIPES.get(args.recipe).obj
    if args.trials < 1 or args.n_jobs < 1:
        raise UsageError("--trials and --n-jobs must be at least 1")
    if args.study is not None and (not args.study.strip() or set(args.study) & set("'\"`|")):
        raise UsageError(
            f"--study {args.study!r}: valid: a name that is not blank, without quotes or '|'"
        )
    return sweep(
        recipe,
        args.space,
        trials=args.trials,
        uri=_checked_uri(args.tracking_uri),
        storage=args.storage,
        study_name=args.study,
        n_jobs=args.n_jobs,
        profile=args.profile,
        extra=args.set or (),
    )


def _checked_uri(explicit: str | None, writes: bool = True) -> str:
    """The tracking URI to use, checked (UsageError): with ``writes``, a local store must be
    writable too (commands that record runs)."""
    from suite.tracking import check_uri, check_writable, tracking_uri

    uri = tracking_uri(explicit)
    try:
        check_uri(uri)
        if writes:
            check_writable(uri)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return uri


def _existing_store(uri: str) -> str:
    """``uri``, if its store exists: commands that only read must not create an empty one."""
    from suite.tracking import check_store_exists

    try:
        check_store_exists(uri)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return uri


def cmd_data(args: argparse.Namespace) -> int:
    from suite import names

    if args.name not in names.DATASETS:
        raise UnknownNameError("dataset", args.name, list(names.DATASETS))
    from suite.tasks.datasets import download_dataset

    download_dataset(args.name, args.data_dir)
    print(f"{args.name} is ready under {args.data_dir}")
    return 0


# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped choice (a subcommand, --profile ...)."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is not None and value not in choices:
            listed = [str(c) for c in choices]
            hint = did_you_mean(str(value), listed)
            if hint:
                raise argparse.ArgumentError(
                    action, f"invalid choice: {value!r}{hint}; choose from {', '.join(listed)}"
                )
        super()._check_value(action, value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="suite",
        description="Benchmark suite for communication-efficient distributed SGD.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run one training job (local ranks, or under torchrun)",
        description="Run TARGET (an algorithm or preset) on --nproc local gloo ranks. Under "
        "torchrun (`torchrun --nproc-per-node N -m suite run TARGET`) the same command runs "
        "as one rank of a multi-node job.",
    )
    run.add_argument("target", help="algorithm name (see `suite list algorithms`)")
    _add_config_args(run)
    run.add_argument("--nproc", type=int, help="number of local ranks (default 4)")
    run.add_argument("--seed", type=int)
    run.add_argument("--steps", type=int, help="optimizer steps")
    run.add_argument("--epochs", type=float, help="epochs (overrides --steps)")
    run.add_argument("--data-dir", help="where MNIST/CIFAR/ImageNet live")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"])
    run.add_argument("--json", action="store_true", help="print one final JSON line on stdout")
    run.add_argument("--no-track", action="store_true", help="do not record an MLflow run")
    run.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI or "
        "sqlite:///mlflow.db in the working directory)",
    )
    run.add_argument("--experiment", help="MLflow experiment (default: the target's paper)")
    run.add_argument("--run-name", help="MLflow run name")
    run.add_argument(
        "--hang-timeout",
        type=_seconds,
        default=40.0,
        help="seconds without progress on any rank before the job is stopped as hung (default 40)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    run.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="extra MLflow run tag (repeatable)"
    )
    run.add_argument(
        "--emulate",
        metavar="NETWORK",
        help="run each rank in its own network namespace behind a link shaped to NETWORK "
        "(a preset: datacenter, 10g, 1g, wan; or RATE[:LATENCY] such as 100mbit, 1gbit:0); "
        "needs root and iproute2, and netem for a latency > 0",
    )
    run.add_argument("--optuna-trial", help=argparse.SUPPRESS)  # set by `suite sweep`
    run.add_argument(
        "--checkpoint-every",
        type=_checkpoint_every,
        default="auto",
        metavar="STEPS",
        help="steps between checkpoints; 0 = none; auto (default) = none for runs projected "
        "under 5 minutes, else about every 10 minutes",
    )
    run.add_argument(
        "--checkpoint-dir",
        help="folder for checkpoints (default: checkpoints/ next to the MLflow store; "
        "needed with --no-track)",
    )
    run.set_defaults(func=cmd_run)

    res = sub.add_parser(
        "resume",
        help="continue a FAILED or KILLED run from its latest checkpoint",
        description="Continue RUN_ID (FAILED or KILLED, with a checkpoint) from its latest "
        "checkpoint into the same MLflow run, with the same config, to the same end as if it "
        "had never stopped; it ends FINISHED. An untracked run resumes from "
        "--checkpoint-dir DIR.",
    )
    res.add_argument("run_id", nargs="?", help="MLflow run id")
    res.add_argument("--checkpoint-dir", help="the checkpoint folder (default: the run's own)")
    res.add_argument("--tracking-uri", help="MLflow store (default as for `suite run`)")
    res.add_argument("--json", action="store_true", help="print one final JSON line on stdout")
    res.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    res.add_argument("--hang-timeout", type=_seconds, default=40.0, help="as for `suite run`")
    res.set_defaults(func=cmd_resume)

    rp = sub.add_parser(
        "replay",
        help="simulated time of a stored run on other networks (its trace replayed)",
        description="Replay RUN_ID's communication trace (or a trace.npz.b64 file) on each "
        "NETWORK (default: every preset) with suite.netmodel and print simulated seconds, per "
        "step and to the run's target accuracy. NETWORK: " + _network_help(),
    )
    rp.add_argument("run", metavar="RUN_ID", help="MLflow run id, or a trace.npz.b64 file")
    rp.add_argument(
        "--network", action="append", metavar="NETWORK", help="repeatable; default: the presets"
    )
    rp.add_argument(
        "--compute-scale",
        type=float,
        default=1.0,
        help="multiply the measured compute (0.1: a 10x faster accelerator; default 1)",
    )
    rp.add_argument(
        "--host-speed",
        type=float,
        metavar="MS",
        help="replay the compute as a host whose reference step (suite.hostspeed, a run's "
        "reference_step_ms) takes MS ms would run it: scaled by MS / the run's own figure, "
        "so runs of two hosts or days compare at like speed (a tracked run that recorded it)",
    )
    rp.add_argument(
        "--harness",
        action="store_true",
        help="also replay the harness's own ops (metric gathers, evaluations; default: skipped)",
    )
    rp.add_argument("--tracking-uri", help="MLflow store (default as for `suite run`)")
    rp.add_argument("--json", action="store_true", help="one JSON line per network")
    rp.set_defaults(func=cmd_replay)

    rep = sub.add_parser(
        "reproduce",
        help="run a paper's recipes, check its claims, write out/reports/PAPER/",
        description="Run every recipe of PAPER (or the one PAPER/LABEL names) at a profile "
        "(runs already FINISHED in MLflow with the same config and the same code are reused), "
        "check every claim and write the report. A recipe whose data is missing is reported "
        "before anything runs and skipped (if none has its data, nothing runs: exit 2). Exits 0 "
        "only if every claim checked at that profile holds or fails as a known deviation, and "
        "no recipe was skipped.",
    )
    rep.add_argument(
        "paper",
        help="paper name, or PAPER/LABEL for one of its recipes (see `suite list recipes`)",
    )
    rep.add_argument("--profile", choices=["smoke", "real", "full"], default="smoke")
    rep.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the profile's)")
    rep.add_argument("--force", action="store_true", help="rerun runs that already finished")
    rep.add_argument(
        "--reuse-any-code",
        action="store_true",
        help="reuse finished runs made by other code too (by default only runs of this commit "
        "and local changes are reused; the report says which were reused)",
    )
    rep.add_argument("--out", help="report directory (default out/reports/PAPER, git-ignored)")
    rep.add_argument("--tracking-uri", help="MLflow store (default as for `suite run`)")
    _add_config_args(rep)
    rep.set_defaults(func=cmd_reproduce)

    report = sub.add_parser("report", help="rebuild out/reports/PAPER/ from the MLflow store alone")
    report.add_argument("paper")
    report.add_argument("--out", help="report directory (default out/reports/PAPER, git-ignored)")
    report.add_argument("--tracking-uri", help="MLflow store (default as for `suite run`)")
    report.add_argument("--experiment", help="MLflow experiment to read (default: the paper)")
    report.set_defaults(func=cmd_report)

    sw = sub.add_parser(
        "sweep",
        help="Optuna study over a recipe's search space, one knob or several (each trial its own "
        "distributed job)",
    )
    sw.add_argument("recipe", help="recipe name (see `suite list recipes`)")
    sw.add_argument("--space", required=True, help="search space name (the recipe's spaces)")
    sw.add_argument("--trials", type=int, required=True, help="finished trials wanted in all")
    sw.add_argument("--storage", help="Optuna storage URL (default sqlite:///optuna.db)")
    sw.add_argument("--study", help="study name (default RECIPE:SPACE:PROFILE)")
    sw.add_argument("--n-jobs", type=int, default=1, help="trials run at once (default 1)")
    sw.add_argument("--profile", choices=["smoke", "real", "full"], default="smoke")
    sw.add_argument("--tracking-uri", help="MLflow store (default as for `suite run`)")
    _add_config_args(sw)
    sw.set_defaults(func=cmd_sweep)

    lst = sub.add_parser("list", help="list registered names with one-line descriptions")
    lst.add_argument("kind", nargs="?", help=f"one of: {', '.join(REGISTRIES)}")
    lst.add_argument("pattern", nargs="?", default="*", help="glob on names (default *)")
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="print a target's resolved config and every settable key")
    show.add_argument("target")
    _add_config_args(show)
    show.set_defaults(func=cmd_show)

    data = sub.add_parser("data", help="dataset helpers")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="download a dataset (needs torchvision)")
    dl.add_argument("name")
    dl.add_argument("--data-dir", required=True)
    dl.set_defaults(func=cmd_data)
    return parser


def _network_help() -> str:
    from suite.network import GRAMMAR, describe_presets

    return f"a preset ({describe_presets()}) or {GRAMMAR}"


MAX_SECONDS = 30 * 24 * 3600.0  # a hang timeout beyond it overflowed the ranks' own timeouts


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0, at most 30 days (argparse then exits 2
    naming the flag)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds > 0 and at most {MAX_SECONDS:.0f} (30 days), "
            f"got {text!r}"
        )
    return value


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key (repeatable); `suite show TARGET` lists the keys",
    )


def main(argv: Sequence[str] | None = None) -> int:
    _die_with_driver()
    args = build_parser().parse_args(argv)
    with _signals_interrupt():
        try:
            return args.func(args)
        except (ConfigError, UnknownNameError, UsageError, DataNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            _say("\ninterrupted")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            if args.func not in (cmd_list, cmd_show):  # a job's: its own clean-up has run
                raise
            # `suite list | head`: the reader left; the exit's flush must not raise again
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_BROKEN_PIPE


def entry() -> NoReturn:
    """The ``suite`` command (and ``python -m suite``): :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` once the exit handlers have run (multiprocessing's joins, logging,
    ``weakref.finalize``) and the standard streams are flushed, skipping the interpreter's
    teardown of every module: with torch imported that takes 0.5-1 s on a 2-core machine, paid
    again by each of a reproduction's runs (each a ``suite run`` child)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# Signals: SIGTERM and SIGHUP end a command the way Ctrl-C does (exit 130)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []  # signals received by this command so far
_recording = False  # training is over and its result is being recorded (_recording_result)


def _on_signal(signum: int, frame: Any) -> None:
    """The first stop signal interrupts the command: KeyboardInterrupt in the main thread, and
    every running ``suite run`` child is told to stop (from whichever thread started it).
    Later SIGTERM/SIGHUP are ignored so they cannot cut the clean-up short (ending runs); a
    second Ctrl-C still interrupts that."""
    if _received and signum != signal.SIGINT:
        return
    _received.append(signum)
    reproduce = sys.modules.get("suite.reproduce")
    if reproduce is not None:
        reproduce.STOP.set()
    if _recording and len(_received) == 1:
        return  # nothing left to stop: the finished run is recorded, then the command ends
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _recording_result() -> Iterator[None]:
    """While a finished run's result is recorded (seconds at most: the host-speed probe, the
    emulated links' replay, MLflow), a first stop signal waits for it instead of losing the
    run (it would end FAILED, its summary unkept); a second Ctrl-C still interrupts."""
    global _recording
    _recording = True
    try:
        yield
    finally:
        _recording = False


@contextlib.contextmanager
def _signals_interrupt() -> Any:
    """Install :func:`_on_signal` for SIGINT, SIGTERM and SIGHUP while a command runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reproduce = sys.modules.get("suite.reproduce")
        if reproduce is not None:
            reproduce.STOP.clear()


def _die_with_driver() -> None:
    """A ``suite run`` that ``suite reproduce``/``sweep`` started (``run_job`` names the driver's
    pid in SUITE_DRIVER_PID) gets SIGTERM when the driver dies, even by kill -9, and stops like
    an interrupted run. The child is not the driver's own (it is forked from the driver's fork
    server, see ``reproduce._run_cli``), so a thread watches the driver: on a pidfd, which
    turns readable when the driver exits, or by polling where there is none."""
    driver = os.environ.pop("SUITE_DRIVER_PID", None)
    if driver is None:
        return
    pid = int(driver)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:  # the driver died before the watch began
        sys.exit(EXIT_INTERRUPTED)
    except (OSError, AttributeError):  # not Linux (5.3 or later)
        pidfd = None

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            from suite import liveness

            while liveness.alive(str(pid)):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-driver", daemon=True).start()
