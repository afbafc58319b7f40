"""Soak test of exact resume: many short trainings killed at random moments, resumed, compared bit for bit.

One uninterrupted reference run, then ``--trials`` runs of the same tiny synthetic training (a checkpoint after
every step, a metrics row after every step, so that many kills land inside a checkpoint write or a metrics append).
Each run is started with ``vanillanet train``, killed (SIGKILL or SIGTERM, to its whole process group) at a step
drawn uniformly from those it has left, at a random moment within that step (one kill in ten during start-up
instead), restarted with ``--resume auto``, possibly killed again, and so on
until it completes. The finished run must equal the reference exactly: the final checkpoint's model, EMA,
optimizer state, step, epoch and act_learn; the weights of ``best.pth``; every metrics row (timings excepted); and
the summary's numbers. Prints and writes a JSON summary: kills (by signal, and how many left a temporary file of an
interrupted write behind), resumes, bit-exact runs and failures.

    python scripts/soak_resume.py --trials 30 --json soak.json            # ~1-2 kills per trial
    python scripts/soak_resume.py --trials 1 --max-kills 1 --quick        # a smoke test (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TINY = ["--data", "synthetic", "--synthetic-size", "32", "--width-mult", "0.0625", "--epochs", "3",
        "--decay-epochs", "2", "--batch-size", "4", "--warmup-epochs", "1", "--img-size", "32", "--no-progress",
        "--threads", "1", "--checkpoint-every", "1", "--keep-last", "2", "--seed", "7", "--drop-rate", "0.2",
        "--set", "log_every=1"]
QUICK = ["--synthetic-size", "16", "--epochs", "2", "--decay-epochs", "1"]
TIMING_KEYS = ("seconds", "img_per_s")
SUMMARY_PATH_KEYS = ("seconds", "checkpoint", "best_checkpoint", "deploy_weights", "plot", "metrics", "config")


def _command(out: Path, args: argparse.Namespace, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "vanillanet", "train", *TINY, *(QUICK if args.quick else []),
           "--workers", str(args.workers), "--output", str(out)]
    return cmd + (["--resume", "auto"] if resume else [])


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _final_state(out: Path) -> dict[str, Any]:
    """What must be identical to the reference (digests of the tensors, exact numbers elsewhere)."""
    import torch

    from vanillanet.util.integrity import digest

    ckpts = sorted(out.glob("checkpoint-*.pth"))
    ckpt = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    best = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    rows = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.append({k: v for k, v in row.items() if k not in TIMING_KEYS})
    summary = json.loads((out / "summary.json").read_text())
    return {
        "final": ckpts[-1].name,
        "model": digest(ckpt["model"]),
        "model_ema": digest(ckpt.get("model_ema")),
        "optimizer": digest(ckpt["optimizer"]["state"]),
        "position": [ckpt["step"], ckpt["epoch"], ckpt["batch"], ckpt["act_learn"]],
        "best": digest(best.get("model_ema", best["model"])),
        "metrics": digest(rows),
        "summary": {k: v for k, v in summary.items() if k not in SUMMARY_PATH_KEYS},
    }


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [k for k in a if a[k] != b.get(k)]


def _wait_for_lock(out: Path, proc: subprocess.Popen, deadline: float) -> float:
    """The moment the run holds its folder (``.lock`` exists), or the process ended, or the deadline."""
    while time.perf_counter() < deadline and proc.poll() is None and not (out / ".lock").exists():
        time.sleep(0.01)
    return time.perf_counter()


def _wait_for_step(out: Path, proc: subprocess.Popen, step: int, deadline: float) -> None:
    """Until the run has checkpointed ``step`` (0: until it holds its folder), or ended, or the deadline."""
    _wait_for_lock(out, proc, deadline)
    while time.perf_counter() < deadline and proc.poll() is None and _newest_step(out) < step:
        time.sleep(0.01)


def _newest_step(out: Path) -> int:
    steps = [int(p.stem.split("-")[1]) for p in out.glob("checkpoint-*.pth")] if out.is_dir() else []
    return max(steps, default=0)


def _leftover_temporaries(out: Path) -> int:
    return len(list(out.glob(".*.tmp"))) if out.is_dir() else 0


def soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vanillanet-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ref = work / "reference"
    shutil.rmtree(ref, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(_command(ref, args, False), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    startup = _wait_for_lock(ref, proc, time.perf_counter() + args.launch_timeout) - start
    _, stderr = proc.communicate(timeout=args.launch_timeout)
    training = time.perf_counter() - start - startup
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed ({proc.returncode}): {stderr[-2000:]}")
    reference = _final_state(ref)
    reference_steps = _newest_step(ref)
    stats: dict[str, Any] = dict(trials=0, kills=0, sigkill=0, sigterm=0, kills_in_startup=0, kills_leaving_tmp=0,
                                 resumes=0, bit_exact=0, failures=[], reference_startup_s=round(startup, 1),
                                 reference_training_s=round(training, 1), kill_log=[])
    for trial in range(args.trials):
        if stats["kills"] >= args.max_kills or time.perf_counter() - t0 > args.budget_s:
            break
        out = work / f"trial-{trial:03d}"
        shutil.rmtree(out, ignore_errors=True)
        stats["trials"] += 1
        launches, failure = 0, None
        while True:
            proc = subprocess.Popen(_command(out, args, launches > 0), env=_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
            stats["resumes"] += launches > 0
            launches += 1
            kill = (launches <= args.max_launches and stats["kills"] < args.max_kills  # the last launch finishes
                    and rng.random() < (0.9 if launches == 1 else args.p_kill))
            sig, in_startup = None, False
            try:
                if kill:
                    # mostly while training (from the moment the run folder is locked), sometimes during start-up
                    in_startup = rng.random() < 0.1
                    if in_startup:
                        deadline = time.perf_counter() + rng.uniform(0.2, startup)
                    else:  # at a step drawn from those left, at a random moment within that step
                        target = rng.randint(_newest_step(out), reference_steps)  # the last: while finishing
                        _wait_for_step(out, proc, target, time.perf_counter() + args.launch_timeout)
                        deadline = time.perf_counter() + rng.uniform(0.0, training / reference_steps)
                    try:
                        proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
                    except subprocess.TimeoutExpired:
                        sig = signal.SIGKILL if rng.random() < args.p_sigkill else signal.SIGTERM
                        os.killpg(proc.pid, sig)
                stdout, stderr = proc.communicate(timeout=args.launch_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                failure = f"launch {launches} hung for {args.launch_timeout} s"
                break
            if sig is not None:
                stats["kills"] += 1
                stats["kills_in_startup"] += in_startup
                stats["sigkill" if sig == signal.SIGKILL else "sigterm"] += 1
                tmp = _leftover_temporaries(out)
                stats["kills_leaving_tmp"] += tmp > 0
                newest = sorted(out.glob("checkpoint-*.pth"))
                stats["kill_log"].append(dict(trial=trial, launch=launches, signal=sig.name, rc=proc.returncode,
                                              newest=newest[-1].name if newest else None, tmp_left=tmp))
                if proc.returncode == 0:
                    break  # the signal came as it exited
                continue
            if proc.returncode != 0:
                failure = f"launch {launches} exited {proc.returncode}: {stderr.strip().splitlines()[-1:]}"
                break
            break
        if failure is None:
            diff = _differences(reference, _final_state(out))
            if diff:
                failure = f"differs from the reference in {', '.join(diff)}"
            else:
                stats["bit_exact"] += 1
        if failure is not None:
            stats["failures"].append(dict(trial=trial, error=failure, folder=str(out)))
        elif not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        print(f"trial {trial}: {launches} launch(es), {'bit-exact' if failure is None else 'FAILED: ' + failure}; "
              f"kills so far {stats['kills']}", flush=True)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    if not args.keep and not stats["failures"]:
        shutil.rmtree(work, ignore_errors=True)
    return stats


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="runs to kill and resume")
    parser.add_argument("--max-kills", type=int, default=60, help="stop after this many kills")
    parser.add_argument("--budget-s", type=float, default=900, help="start no trial after this many seconds")
    parser.add_argument("--p-kill", type=float, default=0.7, help="probability of killing a resumed launch too")
    parser.add_argument("--p-sigkill", type=float, default=0.6, help="share of SIGKILL (else SIGTERM)")
    parser.add_argument("--max-launches", type=int, default=8,
                        help="kill at most this many launches of one trial; the next runs to the end")
    parser.add_argument("--launch-timeout", type=float, default=300, help="a launch taking longer is a hang")
    parser.add_argument("--workers", type=int, default=0, help="data-loading workers of the runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--quick", action="store_true", help="an even smaller training (for the test suite)")
    parser.add_argument("--workdir", help="folder for the runs (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args(argv)
    stats = soak(args)
    text = json.dumps(stats, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(json.dumps({k: v for k, v in stats.items() if k != "kill_log"}, indent=1))
    return stats


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result["failures"] or not result["bit_exact"] else 0)
