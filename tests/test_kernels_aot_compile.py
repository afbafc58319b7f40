"""The Triton kernels compiled for real GPUs (sm_80, sm_90) without a GPU: Triton's compiler and bundled ptxas.

The test session runs the kernels in Triton's interpreter (conftest sets TRITON_INTERPRET=1 where there is no CUDA),
and an interpreted kernel cannot be compiled, so the compiles run in a child process with the interpreter off
(``benchmarks/kernels_aot.py``); Triton's on-disk cache makes a second run fast. The listing of the launches is
checked here in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vanillanet.kernels import act, aot_compile, gemm
from vanillanet.model.geometry import stem_stride_padding
from vanillanet.model.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "kernels_aot.py"


def _launches(name: str, batch: int, dtype: torch.dtype, training: bool) -> list[aot_compile.Launch]:
    spec = VARIANTS[name]
    return aot_compile.network_launches(spec.dims, spec.strides, spec.ada_pool, stem_stride_padding(spec.ada_pool),
                                        224, batch, dtype, training)


def _run(args: list[str], tmp_path: Path, timeout: int) -> dict:
    out = tmp_path / "aot.json"
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *sys.path]))
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--json", str(out)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


def test_launches_cover_every_plan_and_candidate():
    """vanillanet_5 inference: the patchify stem GEMM, the fused-pool (POOL=2) and plain GEMMs, the activation with
    and without ReLU, the fused mean on the last map; every candidate of each table, the first marked."""
    launches = _launches("vanillanet_5", 256, torch.float16, False)
    gemms = [x for x in launches if x.kernel == "conv_gemm"]
    acts = [x for x in launches if x.kernel == "act_fwd"]
    assert {dict(x.constexprs)["PATCH"] for x in gemms} == {1, 4} and {dict(x.constexprs)["POOL"] for x in gemms} == {
        1, 2}
    assert {dict(x.constexprs)["RELU"] for x in acts} == {False, True} and any(dict(x.constexprs)["MEAN"] for x in acts)
    stem = [x.config for x in gemms if dict(x.constexprs)["PATCH"] == 4]
    assert stem == gemm.gemm_candidates(256 * 56 * 56, 48, 512, 1, False)
    assert sum(x.first for x in gemms if dict(x.constexprs)["PATCH"] == 4) == 1 and stem[0] == next(
        x.config for x in gemms if x.first)
    # the backward's tiles are the forward's; in fp16/bf16 its first (untimed) one has 8 warps (4 spill there)
    half, full = act.bwd_candidates(56, 56, 512, False, True), act.bwd_candidates(56, 56, 512, False, False)
    assert set(half) == set(full) == set(act.act_candidates(56, 56, 512, False, False))
    assert half[0].num_warps == 8 and full[0] == act.act_candidates(56, 56, 512, False, False)[0]
    fp32 = gemm.gemm_candidates(256 * 28 * 28, 512, 1024, 2, False, fp32=True)
    assert fp32[0] != gemm.gemm_candidates(256 * 28 * 28, 512, 1024, 2, False)[0] and max(c["BK"] for c in fp32) == 64
    train = _launches("vanillanet_5", 1, torch.bfloat16, True)
    assert {x.kernel for x in train} == {"act_fwd", "dwconv_relu_bwd"}
    assert len([x for x in train if x.kernel == "dwconv_relu_bwd"]) == sum(
        len(act.bwd_candidates(s, s, c, False, True)) for c, s in zip((512, 1024, 2048, 4096), (56, 28, 14, 7)))


def test_ada_pool_runs_the_adaptive_pool_in_torch_and_the_stem_by_cudnn():
    launches = _launches("vanillanet_13_x1_5_ada_pool", 1, torch.float32, False)
    assert not any(dict(x.constexprs).get("PATCH") == 4 for x in launches)  # stride-3 padded stem: cuDNN
    widths = {dict(x.constexprs)["W"] for x in launches if x.kernel == "act_fwd"}
    assert {75, 38, 19, 10} <= widths  # ceil(side / 2) maps of the adaptive pools


def test_distinct_and_check():
    launches = _launches("vanillanet_5", 1, torch.float16, False) * 2
    unique = aot_compile.distinct(launches)
    assert len(unique) == len(set(unique)) < len(launches)
    report = dict(kernel="k", sm=80, registers=255, spill_bytes=8, shared_bytes=aot_compile.SMEM_LIMIT[80] + 1,
                  first_candidate=True)
    problems = aot_compile.check(report)
    assert len(problems) == 2 and "shared memory" in problems[0] and "spills" in problems[1]
    assert aot_compile.check(dict(report, sm=90, spill_bytes=0)) == []


@pytest.mark.slow
def test_every_launch_compiles_for_sm80_and_sm90(tmp_path):
    """The CI check: every distinct launch for sm_80 and sm_90; no compile error, no shared memory over the limit,
    no spills in a table's first candidate; registers reported for each."""
    record = _run(["--workers", str(min(4, os.cpu_count() or 1))], tmp_path, timeout=3600)
    assert record["problems"] == []
    reports = record["reports"]
    assert {r["sm"] for r in reports} == {80, 90} and len(reports) == 2 * len(
        aot_compile.distinct(sum((_launches(n, b, d, t) for n in ("vanillanet_5", "vanillanet_13",
                                                                    "vanillanet_13_x1_5_ada_pool")
                                  for b in (1, 256) for d in (torch.float16, torch.bfloat16, torch.float32)
                                  for t in (False, True)), [])))
    assert all(0 < r["registers"] <= 255 for r in reports)
