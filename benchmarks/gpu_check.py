"""The one GPU check: the GPU tests, then the speed table, in one process with a hard time budget.

1. ``pytest -m gpu -x -q`` (kernels against their references at real shapes, CUDA graphs, torch.compile over the
   custom ops, training steps, DDP over NCCL), with a time limit; log in ``OUT/gpu_check_pytest.log``.
2. Inference, batch 1 and ``--batch-size`` (256), fp16, for vanillanet_5, _13, _9 and resnet50: modes ``paper``
   (fp32 NCHW eager, batch 1, synchronised each call, as published), ``cudagraph`` (channels_last in a CUDA graph),
   ``compile`` (torch.compile, frozen weights + CUDA graphs), ``fused`` (the Triton kernels, tuned on the spot, in a
   CUDA graph; VanillaNets only); ``best`` = the fastest of them (what ``fast_inference(backend="auto")`` keeps).
   Rounds interleave the modes of one model and batch; every mode's max relative error vs fp32 eager is recorded.
3. Training images/s at ``--train-batch-size`` (128) for vanillanet_5 and _13: ``train-amp`` (the original recipe:
   fp16 autocast NCHW + GradScaler) vs ``train-best`` (bf16 channels_last + torch.compile) and ``train-fused``
   (the same with the fused activation op).
4. The loader (``--decoder gpu``, issue 16): decoded images/s per GPU at batch ``--batch-size`` (256 photo-like
   500x375 / 375x500 JPEGs of ~100 KB: nvJPEG or DALI decode + per-sample crop, resize, flip), and vanillanet_5
   training images/s (bf16 channels_last, eager) with batches already on the GPU vs decoded on the GPU each step.

Sections run in priority order (tests, vanillanet_5, its training, vanillanet_13, its training, vanillanet_9,
resnet50); a section starts only when its estimated cost fits in what is left of ``--budget-s`` (default 420 s;
skipped sections are listed with the reason, run them in a second call, e.g. ``--skip pytest --models
vanillanet_13,vanillanet_9,resnet50``), each is guarded so that a failure is reported and the rest still runs,
and the outputs are rewritten after every section: ``OUT/gpu_check.json`` (``vanillanet bench`` records),
``gpu_check.md`` (table + targets), ``gpu_check_tuning.json`` (what the kernels' tuning measured and chose) and
``gpu_check.png`` (chart).

``--dry-run`` runs the same code on the CPU with tiny models (the fused mode in Triton's interpreter).
Usage: ``OUT=/some/dir bash benchmarks/gpu_check.sh`` (see that file).
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # the interpreter must be chosen before triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from tables import markdown_table  # noqa: E402

from vanillanet import kernels  # noqa: E402
from vanillanet.bench import BenchConfig, device_name, plot_records, run_bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEM = "gpu_check"

# (target, how to read it from the records) checked in the summary; None = not measured
TARGETS_MS_BS1 = {"vanillanet_5": 0.09, "vanillanet_13": 0.19}
TARGETS_MS_BIG = {"vanillanet_5": 10.0, "vanillanet_13": 20.0}
TARGETS_TRAIN = {"vanillanet_5": 3500.0, "vanillanet_13": 1500.0}
MAX_REL_ERR = 1e-2
# Guessed seconds per section on an H100/H200, most of it compiling (inductor for compile/train-best/train-fused,
# Triton for the fused kernels and their tuning); a section starts only if it should end within the budget.
ESTIMATES_S = {"infer": 100, "infer-vanillanet_13": 150, "infer-vanillanet_9": 120, "infer-resnet50": 70,
               "train": 110, "train-vanillanet_13": 160, "loader": 40}
TARGET_DECODE = 7000.0  # decoded img/s per GPU


@dataclass
class Plan:
    """What one run measures."""

    device: str
    img_size: int
    width_mult: float
    batch_size: int
    train_batch_size: int
    repeats: int
    round_s: float
    iters: int | None
    num_classes: int
    infer_models: list[str]
    train_models: list[str]
    train_modes: tuple[str, ...]
    half: str
    pytest_args: list[str]
    pytest_timeout_s: float
    budget_s: float
    estimates_s: dict[str, float] = field(default_factory=dict)


def make_plan(args: argparse.Namespace) -> Plan:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    train_models = [m for m in models if m in ("vanillanet_5", "vanillanet_13")]
    if args.dry_run:
        return Plan(device="cpu", img_size=32, width_mult=1 / 32, batch_size=min(args.batch_size, 2),
                    train_batch_size=2, repeats=1, round_s=0.01, iters=1, num_classes=10,
                    infer_models=[m for m in models if m in ("vanillanet_5", "resnet50")],
                    train_models=train_models[:1], train_modes=("train-fp32", "train-amp"), half="fp32",
                    pytest_args=["--collect-only", "-q", "-m", "gpu", "tests/test_kernels_gpu.py"],
                    pytest_timeout_s=60, budget_s=args.budget_s,
                    estimates_s={"pytest": 0, "infer": 0, "train": 0, "loader": 0})
    return Plan(device="cuda", img_size=224, width_mult=1.0, batch_size=args.batch_size,
                train_batch_size=args.train_batch_size, repeats=args.repeats, round_s=0.2, iters=None,
                num_classes=1000, infer_models=models, train_models=train_models,
                train_modes=("train-amp", "train-best", "train-fused"), half="fp16",
                pytest_args=["-m", "gpu", "-x", "-q", "-p", "no:cacheprovider", "tests"],
                pytest_timeout_s=args.pytest_timeout_s, budget_s=args.budget_s,
                estimates_s={"pytest": args.pytest_timeout_s, **ESTIMATES_S})


def _modes(model: str, plan: Plan) -> str:
    """The inference modes of one model: VanillaNets get the fused kernels when they can run here."""
    if plan.device == "cpu":
        modes = ["paper", "channels_last"]
    else:
        modes = ["paper", "cudagraph", "compile"]
    if model.startswith("vanillanet") and kernels.available_on(plan.device):
        modes.append("fused")
    return ",".join(modes)


class Check:
    """Runs the sections within the budget and keeps every output file current."""

    def __init__(self, plan: Plan, out: Path, log: Callable[[str], None]):
        self.plan, self.out, self.log = plan, out, log
        self.t0 = time.perf_counter()
        self.records: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.pytest_summary = "not run"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def section(self, name: str, estimate_key: str, fn: Callable[[], None]) -> None:
        est = self.plan.estimates_s.get(estimate_key, self.plan.estimates_s.get(estimate_key.split("-")[0], 60))
        if self.elapsed() + est > self.plan.budget_s:
            self.notes.append(f"skipped {name}: {self.elapsed():.0f} s used, about {est:.0f} s more would pass the "
                              f"{self.plan.budget_s:.0f} s budget")
            self.log(self.notes[-1])
            return
        start = time.perf_counter()
        self.log(f"section {name} ...")
        try:
            fn()
            self.log(f"section {name} done in {time.perf_counter() - start:.0f} s")
        except Exception as err:  # one broken section must not lose the others
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            self.notes.append(f"{name} failed after {time.perf_counter() - start:.0f} s: {type(err).__name__}: "
                              f"{first}")
            self.log(self.notes[-1])
            traceback.print_exc(file=sys.stderr)
        self.write(chart=self.plan.device != "cpu")  # (the chart costs seconds on a small CPU)

    # ---- sections ---------------------------------------------------------------------------------------------
    def pytest(self) -> None:
        # default kernel configurations in the tests (each tuning candidate compiles); the tests that need tuning
        # turn it on themselves
        env = {**os.environ, "VANILLANET_KERNEL_TUNING": "0",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "pytest", *self.plan.pytest_args]
        path = self.out / f"{STEM}_pytest.log"
        with path.open("w") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                      timeout=self.plan.pytest_timeout_s)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
        tail = [ln for ln in path.read_text().splitlines() if ln.strip()][-1:] or [""]
        self.pytest_summary = (f"timed out after {self.plan.pytest_timeout_s:.0f} s" if code is None
                               else f"exit {code}: {tail[0]}")
        self.log(f"pytest: {self.pytest_summary}")

    def _config(self, **kw: Any) -> BenchConfig:
        p = self.plan
        return BenchConfig(device=p.device, img_size=p.img_size, repeats=p.repeats, round_s=p.round_s, iters=p.iters,
                           num_classes=p.num_classes, **kw)

    def inference(self, model: str) -> None:
        cfg = self._config(models=[model], batch_size=self.plan.batch_size, modes=_modes(model, self.plan),
                           width_mult=self.plan.width_mult if model.startswith("vanillanet") else 1.0)
        self.records += run_bench(cfg, log=self.log)

    def training(self, model: str) -> None:
        cfg = self._config(models=[model], modes="paper", train=True, inference=False,
                           train_batch_size=self.plan.train_batch_size, train_modes=self.plan.train_modes,
                           width_mult=self.plan.width_mult)
        self.records += run_bench(cfg, log=self.log)

    def loader(self) -> None:
        """Section 4: GPU decoding of a batch, and training with and without it (see the module docstring)."""
        from loader_gpu import measure_gpu_loader

        rec = measure_gpu_loader(self.plan.device, batch=self.plan.batch_size, train_batch=self.plan.train_batch_size,
                                 tiny=self.plan.device == "cpu", log=self.log)
        self.records.append(rec)

    def run(self, skip: set[str]) -> None:
        if "pytest" not in skip:
            self.section("pytest", "pytest", self.pytest)
        trains = set(self.plan.train_models) if "train" not in skip else set()
        for model in self.plan.infer_models:
            if "infer" not in skip:
                self.section(f"inference {model}", f"infer-{model}", lambda m=model: self.inference(m))
            if model in trains:
                self.section(f"training {model}", f"train-{model}", lambda m=model: self.training(m))
            if model == "vanillanet_5" and "loader" not in skip:
                self.section("loader", "loader", self.loader)

    # ---- output -----------------------------------------------------------------------------------------------
    def summary(self) -> list[str]:
        recs, half = self.records, self.plan.half
        lines = []

        def infer(model: str, batch: int, mode: str | None = None) -> dict[str, Any] | None:
            cands = [r for r in recs if r["model"] == model and r["kind"] == "inference" and r["form"] == "deploy"
                     and r["batch_size"] == batch and r["mode"] != "paper" and r["dtype"] == half
                     and (mode is None or r["mode"] == mode)]
            return min(cands, key=lambda r: r["median_ms"]) if cands else None

        for model in dict.fromkeys(r["model"] for r in recs if r["kind"] == "inference"):
            for batch in sorted({r["batch_size"] for r in recs if r["model"] == model}):
                best = infer(model, batch)
                if best is None:
                    continue
                graph = infer(model, batch, "cudagraph")
                speed = f", {graph['median_ms'] / best['median_ms']:.2f}x cudagraph" if graph else ""
                target = (TARGETS_MS_BS1 if batch == 1 else TARGETS_MS_BIG).get(model) if half != "fp32" else None
                verdict = "" if target is None else f" (target <= {target} ms: " \
                    f"{'met' if best['median_ms'] <= target else 'NOT met'})"
                lines.append(f"- {model} batch {batch}: best = {best['mode']} {best['median_ms']:.3f} ms{speed}"
                             f"{verdict}")
            v5 = infer(model, 1, "fused"), infer(model, 1, "cudagraph")
            if model == "vanillanet_5" and all(v5):
                ratio = v5[1]["median_ms"] / v5[0]["median_ms"]
                lines.append(f"- vanillanet_5 batch 1 fused vs cudagraph: {ratio:.2f}x (target >= 2.5x: "
                             f"{'met' if ratio >= 2.5 else 'NOT met'})")
        for model in dict.fromkeys(r["model"] for r in recs if r["kind"] == "train"):
            tr = {r["mode"]: r for r in recs if r["model"] == model and r["kind"] == "train"}
            base = tr.get("train-amp")
            for mode in ("train-best", "train-fused"):
                if mode in tr and base:
                    ips, target = tr[mode]["images_per_s"], TARGETS_TRAIN.get(model, 0.0)
                    ok = ips >= target and ips >= 3 * base["images_per_s"]
                    lines.append(f"- {model} training {mode}: {ips:.0f} img/s = {ips / base['images_per_s']:.2f}x "
                                 f"the original recipe ({base['images_per_s']:.0f} img/s); target >= {target} and "
                                 f">= 3x: {'met' if ok else 'NOT met'}")
        for r in (r for r in recs if r["kind"] == "loader"):
            lines.append(f"- loader ({r['decoder']}): {r['decoded_img_per_s']:.0f} decoded img/s per GPU at batch "
                         f"{r['batch_size']} (target >= {TARGET_DECODE:.0f}: "
                         f"{'met' if r['decoded_img_per_s'] >= TARGET_DECODE else 'NOT met'}); vanillanet_5 training "
                         f"{r['train_img_per_s_predecoded']:.0f} img/s with batches on the GPU, "
                         f"{r['train_img_per_s_gpu_decode']:.0f} img/s decoding each batch on the GPU")
        errs = [r for r in recs if r["kind"] == "inference" and r["max_rel_err"] is not None
                and r["model"].startswith("vanillanet") and r["mode"] != "paper"]
        if errs:
            worst = max(errs, key=lambda r: r["max_rel_err"])
            lines.append(f"- largest error of a fast path vs fp32 eager: {worst['max_rel_err']:.2e} ({worst['model']} "
                         f"{worst['mode']} batch {worst['batch_size']}; target <= {MAX_REL_ERR:g}: "
                         f"{'met' if worst['max_rel_err'] <= MAX_REL_ERR else 'NOT met'})")
        return lines

    def write(self, chart: bool = False) -> None:
        """Rewrite the JSON, markdown and tuning files (and with ``chart`` the PNG, which takes seconds)."""
        self.out.mkdir(parents=True, exist_ok=True)
        dev = torch.device(self.plan.device)
        (self.out / f"{STEM}.json").write_text(json.dumps(self.records, indent=1))
        head = (f"# GPU check\n\n{device_name(dev)}, torch {torch.__version__}, "
                f"triton {_triton_version()}, {self.plan.img_size}x{self.plan.img_size}, {self.elapsed():.0f} s in all."
                f"\n\nGPU tests: {self.pytest_summary}.\n")
        table = [r for r in self.records if r["kind"] != "loader"]
        parts = [head, markdown_table(table) if table else "(no records)", "", "Targets:",
                 *(self.summary() or ["- nothing measured"])]
        if self.notes:
            parts += ["", "Notes:", *(f"- {n}" for n in self.notes)]
        (self.out / f"{STEM}.md").write_text("\n".join(parts) + "\n")
        from vanillanet.kernels import autotune

        (self.out / f"{STEM}_tuning.json").write_text(json.dumps(autotune.timings(), indent=1, sort_keys=True))
        if chart and self.records:
            try:
                plot_records([r for r in self.records if r["kind"] != "loader"], self.out / f"{STEM}.png")
            except Exception as err:  # matplotlib missing or broken: the table still counts
                self.notes.append(f"chart not drawn: {type(err).__name__}: {err}")


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "missing"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    p.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: checks the script, not speed")
    p.add_argument("--models", default="vanillanet_5,vanillanet_13,vanillanet_9,resnet50",
                   help="inference models in priority order (vanillanet_5/_13 also train)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: pytest, infer, train, loader")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=420.0, help="start no section that would end after this")
    p.add_argument("--pytest-timeout-s", type=float, default=150.0)
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    plan = make_plan(args)
    out = Path(args.out)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if plan.device == "cuda":
        torch.backends.cudnn.benchmark = True
    check = Check(plan, out, log)
    check.run({s.strip() for s in args.skip.split(",") if s.strip()})
    check.write(chart=True)
    print((out / f"{STEM}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
