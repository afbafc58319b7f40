"""Evaluation: ``evaluate(predict, loader, ...)``, the one evaluation loop of the package, and its use by a
training run (``validate_model``, ``deploy_form``).

``vanillanet eval``, ``vanillanet quantize`` and the training loop's per-epoch validation all call ``evaluate``; the
training run also measures with it how many predictions the deploy form changes. Under DDP every process holds
every world_size-th image and the counts are summed with all_reduce, so each image counts exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..util.devices import DistInfo
from .step import StepParts

__all__ = ["deploy_form", "evaluate", "validate_model"]


@torch.no_grad()
def evaluate(
    predict: Callable[[torch.Tensor], torch.Tensor],
    loader: Any,
    *,
    device: torch.device,
    deploy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    real_labels: Sequence[Sequence[int]] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy and mean cross-entropy of ``predict`` (images -> logits) over ``loader``.

    The loader yields ``(images, targets)`` in dataset order, this process holding dataset indices
    ``rank, rank + world_size, ...`` (``data.build_loader(..., distributed=True)`` does that). Counts are summed
    over processes when ``world_size > 1``. Returns fractions in [0, 1]: ``top1``, ``top5``, mean ``loss``,
    ``images``; with ``real_labels`` also ``real_top1``/``real_images``; with ``deploy`` (a second predictor, e.g.
    the deploy form) also its ``deploy_top1`` and ``deploy_agreement``, the fraction of identical top-1
    predictions.
    """
    from tqdm import tqdm

    stats = torch.zeros(8, dtype=torch.float64)  # top1, top5, loss sum, n, real hit, real n, deploy hit, agree
    index = rank
    for images, targets in tqdm(loader, desc="eval", disable=not progress or rank != 0, leave=False):
        logits = predict(images).float().cpu()
        targets = targets.cpu()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == targets[:, None]
        stats[0] += hit[:, 0].sum().item()
        stats[1] += hit.any(dim=1).sum().item()
        stats[2] += F.cross_entropy(logits, targets, reduction="sum").item()
        stats[3] += len(targets)
        if real_labels is not None:
            for pred in top[:, 0].tolist():
                valid = real_labels[index]
                if valid:
                    stats[4] += pred in valid
                    stats[5] += 1
                index += world_size
        if deploy is not None:
            pred_d = deploy(images).float().argmax(1).cpu()
            stats[6] += (pred_d == targets).sum().item()
            stats[7] += (pred_d == top[:, 0]).sum().item()
    if world_size > 1:
        reduced = stats.to(device)
        torch.distributed.all_reduce(reduced)
        stats = reduced.cpu()
    n = max(stats[3].item(), 1)
    result = {"top1": stats[0].item() / n, "top5": stats[1].item() / n, "loss": stats[2].item() / n,
              "images": int(stats[3].item())}
    if real_labels is not None:
        result.update(real_top1=stats[4].item() / max(stats[5].item(), 1), real_images=int(stats[5].item()))
    if deploy is not None:
        result.update(deploy_top1=stats[6].item() / n, deploy_agreement=stats[7].item() / n)
    return result


def validate_model(model: nn.Module, loader: Any, parts: StepParts, dist: DistInfo, deploy: nn.Module | None = None,
                   amp: bool = True) -> dict[str, Any]:
    """``evaluate`` of a model in training on the validation ``loader``, sharded across processes: batches placed
    as the step places them, under the step's autocast unless ``amp`` is False; ``deploy`` (the deploy form) as
    the second predictor."""
    from ..data.loaders import set_epoch

    model.eval()
    prep = parts.prep
    autocast = {**parts.precision.autocast, "enabled": parts.precision.autocast["enabled"] and amp}

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(**autocast):
            return model(prep.images(x))

    set_epoch(loader, 0)
    return evaluate(predict, loader, device=prep.device, rank=dist.rank, world_size=dist.world_size, progress=False,
                    deploy=None if deploy is None else lambda x: deploy(prep.images(x)))


def deploy_form(model: nn.Module, log: Callable[[str], None]) -> nn.Module | None:
    """The deploy form of the evaluated model, or None for a model that has none: an ablation baseline (nothing to
    re-parameterize) or a VanillaNet with shortcuts (not a plain network)."""
    from ..model.reparam import reparameterize_model

    if not hasattr(model, "reparameterize") or getattr(model, "shortcut", False):
        why = "has shortcuts (not a plain network)" if hasattr(model, "reparameterize") else "is an ablation baseline"
        log(f"this model {why} and has no deploy form: only its train form is evaluated")
        return None
    return reparameterize_model(model)
