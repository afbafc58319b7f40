"""training/evaluation.py: ``evaluate``, the one evaluation loop (top-1/top-5, loss, ReaL labels, the deploy form's
accuracy and agreement, counts summed across processes), ``validate_model`` and ``deploy_form``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build_variant, built_run

from vanillanet.training.evaluation import deploy_form, evaluate, validate_model
from vanillanet.util.devices import DistInfo

CPU = torch.device("cpu")
# Six "images" that are their own logits over 6 classes: the predictions and their ranks are set by hand.
LOGITS = torch.tensor([[9, 8, 7, 6, 5, 4], [1, 9, 8, 7, 6, 5], [0, 1, 2, 3, 4, 9], [9, 0, 0, 0, 0, 0],
                       [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]], dtype=torch.float32)
TARGETS = torch.tensor([0, 2, 0, 0, 5, 3])  # top-1 hits: 0, 3, 4; top-5 misses: image 2 (class 0 ranks 6th)


def loader(batch: int = 4):
    return [(LOGITS[i:i + batch], TARGETS[i:i + batch]) for i in range(0, len(LOGITS), batch)]


def test_counts_by_hand():
    got = evaluate(lambda x: x, loader(), device=CPU, progress=False)
    assert got["images"] == 6 and got["top1"] == pytest.approx(3 / 6) and got["top5"] == pytest.approx(5 / 6)
    assert got["loss"] == pytest.approx(F.cross_entropy(LOGITS, TARGETS).item(), rel=1e-6)
    assert "deploy_top1" not in got and "real_top1" not in got


def test_real_labels_and_the_deploy_form():
    real = [[0], [1, 2], [], [0], [4], [0]]  # image 2 has no ReaL label and is not counted
    deploy = lambda x: x.roll(1, dims=0)  # noqa: E731 - a second predictor that disagrees on some images
    got = evaluate(lambda x: x, loader(batch=3), device=CPU, real_labels=real, deploy=deploy, progress=False)
    assert got["real_images"] == 5 and got["real_top1"] == pytest.approx(4 / 5)  # image 4 predicts 5
    pred_d = torch.cat([b.roll(1, dims=0) for b, _ in loader(batch=3)]).argmax(1)
    assert got["deploy_top1"] == pytest.approx((pred_d == TARGETS).float().mean().item())
    assert got["deploy_agreement"] == pytest.approx((pred_d == LOGITS.argmax(1)).float().mean().item())


def test_a_shard_reads_its_own_real_labels(monkeypatch):
    """Process 1 of 2 holds images 1, 3, 5: its ReaL labels are those of every second image from index 1, and its
    counts are summed with the other process's (here: all_reduce adds nothing)."""
    reduced = []
    monkeypatch.setattr(torch.distributed, "all_reduce", reduced.append)
    real = [[5], [1], [5], [0], [5], [0]]
    shard = [(LOGITS[[1, 3, 5]], TARGETS[[1, 3, 5]])]
    got = evaluate(lambda x: x, shard, device=CPU, real_labels=real, rank=1, world_size=2, progress=False)
    assert got["real_images"] == 3 and got["real_top1"] == pytest.approx(3 / 3)
    assert len(reduced) == 1 and reduced[0][3] == 3  # the image count went through all_reduce


def test_validate_model_and_the_deploy_form_agree(tmp_path):
    state, run, _ = built_run(tmp_path, "amp=false", model_ema=False)
    model = state.model
    model.act_learn = 1.0
    deploy = deploy_form(model, log=lambda s: None)
    got = validate_model(model, run.data.val_loader, run.parts, DistInfo(), deploy=deploy)
    assert not model.training and got["images"] == len(run.data.val_loader.dataset)
    assert got["deploy_agreement"] == 1.0 and got["deploy_top1"] == pytest.approx(got["top1"])


def test_models_without_a_deploy_form():
    said = []
    assert deploy_form(build_variant("vanillanet_7", shortcut=True), said.append) is None
    assert deploy_form(torch.nn.Linear(2, 2), said.append) is None
    assert said == ["this model has shortcuts (not a plain network) and has no deploy form: only its train form is "
                    "evaluated", "this model is an ablation baseline and has no deploy form: only its train form is "
                    "evaluated"]
