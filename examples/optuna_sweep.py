#!/usr/bin/env python3
"""A hyperparameter search driven by Optuna over `llmtrain train` processes.

Each Optuna trial is one llmtrain run, by the trial protocol of include/llmtrain/spec/sweep.h:

    llmtrain train --spec SPEC [--set F=V]... --set output.dir=TRIAL_DIR --resume [--stop-at-step N]

The run stops at each rung step (an evaluation and a checkpoint there), the trial reports that
evaluation's eval_loss to Optuna, and Optuna's MedianPruner decides whether it goes on: a pruned
trial keeps its checkpoint, a trial that goes on resumes from it with the same schedule. Trials
live in Optuna's SQLite storage, so several machines (or several copies of this script on one)
that share the database file and the output folder work on one study:

    .venv/bin/python examples/optuna_sweep.py --llmtrain build/bin/llmtrain \\
        --spec examples/specs/gemma3_270m_cpu.textproto --output build/optuna \\
        --rungs 10,20 --complete 4

The search space is `suggest` below (Optuna's define-by-run API): edit it to search other fields.
Stops once `--complete` trials have completed (pruned ones do not count), counting every
process's trials, or after `--max-trials` trials were started here. Prints one JSON line with
the study's counts and the best trial.

A process that dies leaves its trial RUNNING in the database. With a database storage the script
sends a heartbeat every --heartbeat seconds; once a trial has missed three, the next process to
start marks it failed and RetryFailedTrialCallback enqueues it again with the same parameters (up
to twice), and the retry continues in the first attempt's folder from its newest checkpoint.
"""
import argparse
import json
import os
import subprocess
import sys

import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback


def suggest(trial):
    """The search space: run spec fields (as --set names them) and the values Optuna draws."""
    return {
        "training.learning_rate": trial.suggest_float("training.learning_rate", 1e-4, 1e-2, log=True),
        "lora.r": trial.suggest_categorical("lora.r", [2, 4, 8]),
    }


def eval_losses(trial_dir):
    """eval_loss by step from the trial's metrics.jsonl (the last line for a step wins)."""
    losses = {}
    try:
        with open(os.path.join(trial_dir, "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a run killed mid-line
                if record.get("type") == "eval" and isinstance(record.get("eval_loss"), (int, float)):
                    losses[record["step"]] = record["eval_loss"]
    except FileNotFoundError:
        pass
    return losses


def max_steps(args):
    """training.max_steps of the resolved spec, as `llmtrain spec --check` prints it (0 = from epochs)."""
    command = [args.llmtrain, "spec", "--check", args.spec]
    for assignment in args.set:
        command += ["--set", assignment]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"optuna_sweep: the spec is not valid:\n{done.stderr}")
    in_training = False
    for line in done.stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith("training {"):
            in_training = True
        elif in_training and stripped.startswith("max_steps:"):
            return int(stripped.split(":", 1)[1])
        elif in_training and stripped == "}":
            in_training = False
    return 0


def run_to(args, params, trial_dir, stop_at):
    """One llmtrain process: the trial to step `stop_at` (None: to the end). Raises on failure."""
    command = [args.llmtrain, "train", "--spec", args.spec]
    for assignment in args.set:
        command += ["--set", assignment]
    for field, value in params.items():
        command += ["--set", f"{field}={value}"]
    command += ["--set", f"output.dir={trial_dir}", "--resume"]
    if stop_at is not None:
        command += ["--stop-at-step", str(stop_at)]
    env = dict(os.environ)
    if args.threads > 0:
        env["LLMTRAIN_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(args.threads)
    os.makedirs(trial_dir, exist_ok=True)
    with open(os.path.join(trial_dir, "train.log"), "a", encoding="utf-8") as log:
        log.write("== optuna_sweep: " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}; see {trial_dir}/train.log")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llmtrain", required=True, help="the llmtrain program (build/bin/llmtrain)")
    parser.add_argument("--spec", required=True, help="the base run spec")
    parser.add_argument("--set", action="append", default=[], help="an override of the base spec (repeatable)")
    parser.add_argument("--output", required=True, help="the folder of the trials (shared by every process)")
    parser.add_argument("--storage", default="", help="Optuna storage URL; default sqlite:///OUTPUT/optuna.db")
    parser.add_argument("--study", default="llmtrain", help="the study's name")
    parser.add_argument("--rungs", default="", help="comma-separated steps where trials report and may be pruned")
    parser.add_argument("--complete", type=int, default=4, help="stop once this many trials have completed")
    parser.add_argument("--max-trials", type=int, default=16, help="trials this process starts at most")
    parser.add_argument("--startup-trials", type=int, default=2, help="MedianPruner: trials never pruned")
    parser.add_argument("--seed", type=int, default=None,
                        help="the sampler's seed (default: none, so that processes sharing a study draw apart)")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a running trial's heartbeats")
    parser.add_argument("--threads", type=int, default=0, help="threads of each run (0 = llmtrain's default)")
    args = parser.parse_args()
    args.llmtrain = os.path.abspath(args.llmtrain)
    args.spec = os.path.abspath(args.spec)
    os.makedirs(args.output, exist_ok=True)
    storage = args.storage or "sqlite:///" + os.path.abspath(os.path.join(args.output, "optuna.db"))
    rungs = [int(s) for s in args.rungs.split(",") if s.strip()]
    if rungs != sorted(set(rungs)) or any(r < 1 for r in rungs):
        parser.error("--rungs: increasing steps ≥ 1")
    total = max_steps(args)
    if rungs and (total <= 0 or rungs[-1] >= total):
        parser.error(f"--rungs: every rung must be below training.max_steps ({total}; 0 = from epochs)")

    url = storage
    if storage.startswith(("sqlite:", "postgresql", "mysql")):
        storage = RDBStorage(url, heartbeat_interval=args.heartbeat, grace_period=3 * args.heartbeat,
                             failed_trial_callback=RetryFailedTrialCallback(max_retry=2))
    study = optuna.create_study(
        study_name=args.study,
        storage=storage,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials, n_warmup_steps=0),
    )

    def objective(trial):
        params = suggest(trial)
        # A retry of a trial whose process died continues in the first attempt's folder.
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        first = RetryFailedTrialCallback.retried_trial_number(frozen)
        number = trial.number if first is None else first
        trial_dir = os.path.abspath(os.path.join(args.output, f"trial-{number:04d}"))
        trial.set_user_attr("dir", trial_dir)
        for rung in rungs:
            run_to(args, params, trial_dir, rung)
            losses = eval_losses(trial_dir)
            if rung not in losses:
                raise RuntimeError(f"{trial_dir}/metrics.jsonl has no evaluation at step {rung}")
            trial.report(losses[rung], rung)
            if trial.should_prune():
                raise optuna.TrialPruned(f"eval_loss {losses[rung]:.6g} at step {rung}: worse than the median")
        run_to(args, params, trial_dir, None)
        losses = eval_losses(trial_dir)
        if not losses:
            raise RuntimeError(f"{trial_dir}/metrics.jsonl has no evaluation")
        return losses[max(losses)]

    stop = optuna.study.MaxTrialsCallback(args.complete, states=(optuna.trial.TrialState.COMPLETE,))
    study.optimize(objective, n_trials=args.max_trials, callbacks=[stop], catch=(RuntimeError,))

    states = {}
    for t in study.trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    summary = {"study": args.study, "storage": url, "trials": states}
    if states.get("complete", 0) > 0:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "adapter": os.path.join(best.user_attrs["dir"], "adapter")}
    print(json.dumps(summary))
    return 0 if states.get("complete", 0) >= args.complete else 1


if __name__ == "__main__":
    sys.exit(main())
