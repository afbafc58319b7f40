"""Compile every Triton kernel launch of vanillanet_5, vanillanet_13 and the ada_pool variant (224 px, batch 1 and
256, fp16/bf16/fp32, training and inference; every candidate config) for sm_80 and sm_90 without a GPU, and write
the registers / spills / shared memory of each as a JSON record (``kernels.aot_compile``; the test is
tests/test_kernels_aot_compile.py).

    TRITON_INTERPRET=0 python benchmarks/kernels_aot.py --workers 4 --json benchmarks/results/kernels_aot.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton

from vanillanet.kernels import aot_compile
from vanillanet.model.geometry import stem_stride_padding
from vanillanet.model.variants import VARIANTS

MODELS = ("vanillanet_5", "vanillanet_13", "vanillanet_13_x1_5_ada_pool")
CAPABILITIES = (80, 90)


def all_launches() -> list[aot_compile.Launch]:
    """The distinct launches of MODELS at 224 px, batch 1 and 256, three dtypes, training and inference."""
    out = []
    for name in MODELS:
        spec = VARIANTS[name]
        for batch in (1, 256):
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                for training in (False, True):
                    out += aot_compile.network_launches(spec.dims, spec.strides, spec.ada_pool,
                                                        stem_stride_padding(spec.ada_pool), 224, batch, dtype,
                                                        training)
    return aot_compile.distinct(out)


def _one(job: tuple[aot_compile.Launch, int]) -> dict:
    launch, cc = job
    try:
        return aot_compile.compile_launch(launch, cc)
    except Exception as err:  # reported, and failed on by the caller
        return dict(kernel=launch.name(), sm=cc, error=str(err).strip().splitlines()[0][:300])


def compile_all(workers: int) -> list[dict]:
    jobs = [(launch, cc) for cc in CAPABILITIES for launch in all_launches()]
    if workers <= 1:
        return [_one(job) for job in jobs]
    out = []
    with ProcessPoolExecutor(workers) as pool:
        for i, report in enumerate(pool.map(_one, jobs, chunksize=4)):
            out.append(report)
            if i % 100 == 99:
                print(f"{i + 1} / {len(jobs)} compiled", flush=True)
    return out


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="write the record here")
    args = parser.parse_args()
    start = time.perf_counter()
    reports = compile_all(args.workers)
    problems = [p for r in reports if "error" not in r for p in aot_compile.check(r)]
    problems += [f"{r['kernel']} on sm_{r['sm']}: {r['error']}" for r in reports if "error" in r]
    record = dict(triton=triton.__version__, torch=torch.__version__, cpu=_cpu_model(), workers=args.workers,
                  seconds=round(time.perf_counter() - start, 1), compiled=len(reports), problems=problems,
                  max_registers=max((r.get("registers", 0) for r in reports), default=0),
                  max_shared_bytes=max((r.get("shared_bytes", 0) for r in reports), default=0), reports=reports)
    print(f"{len(reports)} compiles in {record['seconds']} s; {len(problems)} problems")
    for p in problems[:20]:
        print("  " + p)
    if args.json:
        write_record(record, Path(args.json))


def write_record(record: dict, path: Path) -> None:
    """The record as JSON with one line per compile report (diffable, a third of the indented size)."""
    head = json.dumps({k: v for k, v in record.items() if k != "reports"}, indent=1)
    rows = ",\n".join("  " + json.dumps(r) for r in record["reports"])
    path.write_text(head[:-2] + ',\n "reports": [\n' + rows + "\n ]\n}\n")


if __name__ == "__main__":
    main()
