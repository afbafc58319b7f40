"""Ahead-of-time compilation of the Triton kernels for real GPUs, without a GPU: the CI check that the interpreter
cannot give (block shapes, shared memory and register pressure are only checked by the real compiler).

``network_launches`` lists every kernel launch a network of the given geometry can make: in inference every plan
of ``FusedDeployNet`` (patchify stem or cuDNN stem, then ``fused-pool`` / ``gemm`` / ``linear`` per block, the
fused mean on the last map), in training the ``dwconv_relu`` forward and backward of every activation, each with
every candidate of the CUDA tables in ``act.act_candidates`` / ``gemm.gemm_candidates``. ``compile_launch``
compiles one of them with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` (Triton's own
passes and its bundled ptxas) and reports registers, spills and shared memory; ``check`` turns a report into the
problems CI fails on. Plain numbers in, so this package stays below ``model`` (the caller passes the variant's
dims and strides).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton

from . import act, gemm
from .autotune import Config

__all__ = ["SMEM_LIMIT", "Launch", "check", "compile_launch", "distinct", "network_launches"]

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory one block may use (sm_80, sm_90)
_PTR = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
_KERNELS = {"act_fwd": act._act_fwd_kernel, "dwconv_relu_bwd": act._dwconv_relu_bwd_kernel,
            "conv_gemm": gemm._conv_gemm_kernel}


@dataclasses.dataclass(frozen=True)
class Launch:
    """One compiled kernel: its name, pointer types, constexpr values, specialised runtime ints and config.
    ``first`` marks the first (untimed default) candidate of its table."""

    kernel: str
    pointers: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, int], ...]
    ints: tuple[tuple[str, int], ...]
    config: Config
    first: bool

    def name(self) -> str:
        consts = ",".join(f"{k}={int(v)}" for k, v in self.constexprs)
        ptrs = "/".join(t[1:] for _, t in self.pointers)
        return (f"{self.kernel}[{ptrs}|{consts}|{','.join(f'{k}={v}' for k, v in self.ints)}|"
                f"warps={self.config.num_warps},stages={self.config.num_stages}]")


def _act_launches(c: int, h: int, w: int, k: int, s: int, mean: bool, relu: bool, bias: bool,
                  dtype: torch.dtype) -> list[Launch]:
    """The activation kernel on an h x w x c input pooled by s (forward of inference and training)."""
    ho, wo = h // s, w // s
    ptr = _PTR[dtype]
    pointers = (("x_ptr", ptr), ("w_ptr", "*fp32"), ("b_ptr", "*fp32"), ("out_ptr", ptr))
    consts = (("C", c), ("W", w), ("K", k), ("RH", act._reach(k, ho)), ("RW", act._reach(k, wo)), ("S", s),
              ("HAS_BIAS", bias), ("MEAN", mean), ("RELU", relu))
    cands = act.act_candidates(ho, wo, c, mean, False)
    return [Launch("act_fwd", pointers, consts + cfg.blocks, (), cfg, i == 0) for i, cfg in enumerate(cands)]


def _bwd_launches(c: int, h: int, w: int, k: int, dtype: torch.dtype) -> list[Launch]:
    ptr = _PTR[dtype]
    pointers = (("g_ptr", ptr), ("x_ptr", ptr), ("w_ptr", "*fp32"), ("gx_ptr", ptr), ("gw_ptr", "*fp32"))
    consts = (("C", c), ("W", w), ("K", k), ("RH", act._reach(k, h)), ("RW", act._reach(k, w)))
    cands = act.bwd_candidates(h, w, c, False, dtype != torch.float32)
    return [Launch("dwconv_relu_bwd", pointers, consts + cfg.blocks, (), cfg, i == 0) for i, cfg in enumerate(cands)]


def _gemm_launches(m: int, cin: int, cout: int, patch: int, pool: int, dtype: torch.dtype) -> list[Launch]:
    ptr = _PTR[dtype]
    pointers = (("a_ptr", ptr), ("w_ptr", ptr), ("b_ptr", "*fp32"), ("out_ptr", ptr))
    k = patch * patch * cin
    consts = (("PATCH", patch), ("POOL", pool), ("PREC", 1 if dtype == torch.float32 else 0), ("RELU", True))
    ints = (("CIN", cin), ("K", k), ("COUT", cout))
    cands = gemm.gemm_candidates(m, k, cout, pool, False, dtype == torch.float32)
    return [Launch("conv_gemm", pointers, consts + cfg.blocks, ints, cfg, i == 0) for i, cfg in enumerate(cands)]


def _block_launches(cin: int, cout: int, h: int, w: int, pool: int, last: bool, k: int, batch: int,
                    dtype: torch.dtype) -> list[Launch]:
    """Every plan of one deploy block (``FusedDeployNet``): pool 1 (none), 2 (max-pool) or 0 (adaptive, by torch
    between the GEMM and the activation, to ceil(side / 2))."""
    out: list[Launch] = []
    if pool == 2:  # fused-pool: the GEMM pools, the activation does not
        ho, wo = h // 2, w // 2
        out += _gemm_launches(batch * ho * wo, cin, cout, 1, 2, dtype)
        out += _act_launches(cout, ho, wo, k, 1, last and act.mean_fits(ho, wo), False, True, dtype)
    out += _gemm_launches(batch * h * w, cin, cout, 1, 1, dtype)  # the gemm plan's GEMM
    if pool == 0:
        h, w, pool = -(-h // 2), -(-w // 2), 1
    ho, wo = h // pool, w // pool
    mean = last and act.mean_fits(ho, wo)
    for relu in (False, True):  # after the Triton GEMM (ReLU done) and after cuBLAS (the linear plan)
        out += _act_launches(cout, h, w, k, pool, mean, relu, True, dtype)
    return out


def network_launches(dims: tuple[int, ...], strides: tuple[int, ...], ada_pool: tuple[int, ...] | None,
                     stem: tuple[int, int], img: int, batch: int, dtype: torch.dtype, training: bool,
                     act_num: int = 3, in_chans: int = 3) -> list[Launch]:
    """Every launch (each candidate config) a VanillaNet of this geometry makes on ``batch`` x ``img`` px inputs.
    ``stem`` = the stem conv's (stride, padding); the stem's kernel is 4x4."""
    k = 2 * act_num + 1
    side = (img + 2 * stem[1] - 4) // stem[0] + 1
    sides = [side]
    pools = []
    for i, s in enumerate(strides):
        pools.append(1 if s == 1 else 0 if ada_pool is not None and ada_pool[i] else s)
        side = side if s == 1 else -(-side // s) if pools[-1] == 0 else side // s
        sides.append(side)
    out: list[Launch] = []
    if training:
        for c, sd in zip(dims, sides):
            out += _act_launches(c, sd, sd, k, 1, False, True, False, dtype) + _bwd_launches(c, sd, sd, k, dtype)
        return out
    last = not strides
    mean = last and act.mean_fits(sides[0], sides[0])
    if stem == (4, 0):  # the patchify plan: the GEMM's epilogue applies the ReLU
        out += _gemm_launches(batch * sides[0] ** 2, in_chans, dims[0], 4, 1, dtype)
        out += _act_launches(dims[0], sides[0], sides[0], k, 1, mean, False, True, dtype)
    out += _act_launches(dims[0], sides[0], sides[0], k, 1, mean, True, True, dtype)  # after cuDNN's conv
    for i, pool in enumerate(pools):
        out += _block_launches(dims[i], dims[i + 1], sides[i], sides[i], pool, i == len(pools) - 1, k, batch, dtype)
    return out


def distinct(launches: list[Launch]) -> list[Launch]:
    """Each kernel/config once (in first-seen order); ``first`` when it is a table's default anywhere."""
    seen: dict[Launch, bool] = {}
    for launch in launches:
        key = dataclasses.replace(launch, first=False)
        seen[key] = seen.get(key, False) or launch.first
    return [dataclasses.replace(key, first=first) for key, first in seen.items()]


def _ptxas_usage(ptx: str, capability: int) -> tuple[int, int]:
    """(registers per thread, spill bytes stored + loaded) from Triton's bundled ptxas in verbose mode (the flags
    that matter for allocation are Triton's; its own run keeps no log). Kept beside Triton's cache, by PTX digest,
    so that a second run of the check, like Triton's compile, reads instead of recompiling."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    try:
        ptxas = get_ptxas(capability)
    except TypeError:  # Triton releases before the separate Blackwell ptxas take no argument
        ptxas = get_ptxas()
    ptxas = getattr(ptxas, "path", ptxas)
    digest = hashlib.sha256(f"{ptxas}\n{capability}\n{ptx}".encode()).hexdigest()
    cached = Path(triton.knobs.cache.dir) / "vanillanet_ptxas" / f"{digest}.json"
    if cached.is_file():
        return tuple(json.loads(cached.read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        done = subprocess.run([ptxas, "-v", "-lineinfo", f"--gpu-name={sm_arch_from_capability(capability)}",
                               str(src), "-o", str(Path(tmp) / "k.o")], capture_output=True, text=True, check=True)
    log = done.stderr + done.stdout
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", log)
    usage = (int(regs.group(1)) if regs else -1), sum(int(s) for s in spills)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cached.with_suffix(f".{os.getpid()}.tmp")
    tmp_file.write_text(json.dumps(usage))
    tmp_file.replace(cached)  # atomic: parallel workers never read half a file
    return usage


def compile_launch(launch: Launch, capability: int) -> dict:
    """Compile ``launch`` for sm_``capability`` (no GPU needed); its registers, spills and shared memory (bytes)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _KERNELS[launch.kernel]
    names = list(fn.arg_names)
    types = dict(launch.pointers) | {n: "i32" for n in names if n not in dict(launch.pointers)}
    consts = dict(launch.constexprs)
    types |= {n: "constexpr" for n in consts}
    aligned = [n for n, _ in launch.pointers] + [n for n, v in launch.ints if v % 16 == 0]
    src = ASTSource(fn, {n: types[n] for n in names}, constexprs={(names.index(n),): v for n, v in consts.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned})
    kernel = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                            options=dict(num_warps=launch.config.num_warps, num_stages=launch.config.num_stages))
    regs, spills = _ptxas_usage(kernel.asm["ptx"], capability)
    return dict(kernel=launch.name(), sm=capability, registers=regs, spill_bytes=spills,
                shared_bytes=int(kernel.metadata.shared), first_candidate=launch.first)


def check(report: dict) -> list[str]:
    """What CI fails on in one compile report: shared memory over the architecture's limit, spills in a table's
    first (untimed) candidate."""
    problems = []
    limit = SMEM_LIMIT[report["sm"]]
    if report["shared_bytes"] > limit:
        problems.append(f"{report['kernel']} on sm_{report['sm']}: {report['shared_bytes']} B shared memory > "
                        f"{limit} B")
    if report["first_candidate"] and report["spill_bytes"]:
        problems.append(f"{report['kernel']} on sm_{report['sm']}: the default config spills "
                        f"{report['spill_bytes']} B")
    return problems
