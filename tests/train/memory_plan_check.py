"""The memory planner (`llmtrain plan`) against measured peaks.

The README job's spec (the real Gemma 3 270M Q4_K_M GGUF from PyPI, re-quantized to NF4, QLoRA on
the CPU, the default Dolly data of this machine) trains a few steps, with its evaluation and
sample at the start and the end, at world 1 (engine single) and at world 2 (engine zero3 under
`llmtrain launch`). For each, `llmtrain plan --json` predicts the peak memory of one process and
the largest peak resident set (ru_maxrss) of the run's processes is measured: os.wait4 on the
launcher reports the maximum over the ranks it reaped. The check fails when the prediction is
off by more than --tolerance (10%).

usage: memory_plan_check.py --llmtrain build/bin/llmtrain --workdir DIR [--steps 3]
         [--model .venv/models/gemma-3-270m-q4_k_m.gguf] [--tolerance 0.10]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.path.join(ROOT, "examples", "specs", "gemma3_270m_cpu.textproto")


def run_measured(argv, env, log_path):
    """Runs argv to the end; returns (exit status, peak RSS in MiB of it and its reaped children)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--llmtrain", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default=os.path.join(ROOT, ".venv", "models", "gemma-3-270m-q4_k_m.gguf"))
    parser.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args()
    if not os.path.exists(args.model):
        print(f"memory_plan_check: {args.model} is missing (scripts/bootstrap installs it)", file=sys.stderr)
        return 1
    os.makedirs(args.workdir, exist_ok=True)
    data = os.path.join(args.workdir, "all.jsonl")
    subprocess.run([args.llmtrain, "make-default-dataset", "--output", data], check=True, stdout=subprocess.DEVNULL)
    with open(data) as f:
        lines = f.readlines()
    train, evaluation = os.path.join(args.workdir, "train.jsonl"), os.path.join(args.workdir, "eval.jsonl")
    with open(train, "w") as f:
        f.writelines(lines[:-64])
    with open(evaluation, "w") as f:
        f.writelines(lines[-64:])

    rows, failed = [], False
    for world, engine in ((1, "single"), (2, "zero3")):
        out = os.path.join(args.workdir, f"run_w{world}")
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resume
        sets = [f"model.path={args.model}", f"data.train_files={train}", f"data.eval_files={evaluation}",
                f"training.max_steps={args.steps}", f"output.dir={out}", f"distributed.engine={engine}",
                "checkpoint.every_steps=0"]
        set_args = [a for s in sets for a in ("--set", s)]
        plan = subprocess.run([args.llmtrain, "plan", "--spec", SPEC, "--world-size", str(world), "--json"] + set_args,
                              capture_output=True, text=True)
        if plan.returncode not in (0, 1):
            print(plan.stdout + plan.stderr, file=sys.stderr)
            return 1
        predicted = json.loads(plan.stdout)["peak_bytes"] / 2**20
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)  # the launcher splits the cores; one process takes them all
        train_cmd = [args.llmtrain, "train", "--spec", SPEC] + set_args
        argv = train_cmd if world == 1 else [args.llmtrain, "launch", "--nproc-per-node", str(world), "--"] + train_cmd
        code, measured = run_measured(argv, env, out + ".log")
        if code != 0:
            with open(out + ".log") as f:
                print(f.read()[-4000:], file=sys.stderr)
            print(f"memory_plan_check: world {world}: training exited with {code}", file=sys.stderr)
            return 1
        ratio = predicted / measured
        ok = abs(ratio - 1.0) <= args.tolerance
        failed = failed or not ok
        rows.append((world, engine, predicted, measured, ratio, ok))

    print(f"{'world':>5} {'engine':>7} {'planned MiB':>12} {'measured MiB':>13} {'planned/measured':>17}")
    for world, engine, predicted, measured, ratio, ok in rows:
        print(f"{world:>5} {engine:>7} {predicted:>12.1f} {measured:>13.1f} {ratio:>17.3f}{'' if ok else '  OFF'}")
    if failed:
        print(f"memory_plan_check: a plan is off by more than {args.tolerance:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
