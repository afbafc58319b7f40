"""CUDA-graph capture of a fixed-shape forward pass: the one place that does it (the ``cudagraph`` backend and the
fused Triton kernels both use it). At batch 1 a GPU spends most of a VanillaNet forward launching kernels; a graph
replays them all with one launch."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["capture"]


def capture(fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
            warmup: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` on ``example``'s shape captured in a CUDA graph, after ``warmup`` calls on a side stream (as capture
    requires: lazy initialisation and autotuning happen outside the graph). Calls copy the input into the static
    buffer and replay; the returned tensor is the static output buffer, overwritten by the next call."""
    static_in = example.clone()
    stream = torch.cuda.Stream(device=example.device)
    stream.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(warmup):
            fn(static_in)
    torch.cuda.current_stream(example.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static_out = fn(static_in)

    def run(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run
