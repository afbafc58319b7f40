"""vanillanet eval: exact accuracy on a written ImageFolder with a model whose predictions are known, ReaL labels,
the small datasets, errors, torchrun."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import build_variant
from PIL import Image

from vanillanet.cli import main
from vanillanet.data.sources import build_dataset
from vanillanet.evaluate import evaluate, load_real_labels
from vanillanet.model.checkpoint_files import save_weights
from vanillanet.model.reparam import reparameterize_model

BIAS = [0.0, 5.0, 1.0]  # the controlled model always predicts class 1 ("b"), then 2, then 0
# class -> file names; sorted file-name order differs from ImageFolder's (class, name) order on purpose
FILES = {"a": ["img_07.png", "img_02.jpg", "img_05.png", "img_09.png"], "b": ["img_01.png", "img_08.jpg", "img_03.png"],
         "c": ["img_06.png", "img_04.png"]}


def constant_checkpoint(path, bias=BIAS, num_classes=3, **kwargs):
    """A deploy-form model whose weights are all zero but the head bias: logits == bias for every image."""
    model = reparameterize_model(build_variant("vanillanet_5", width_mult=1 / 32, num_classes=num_classes, **kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.cls[2].bias.copy_(torch.tensor(bias))
    save_weights(model, path, class_names=[f"class_{i}" for i in range(num_classes)] if num_classes != 3 else
                 ["a", "b", "c"])
    return path


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory):
    """An ImageFolder root of 40x50 noise images named in ``FILES`` (train and val), for the exact-count checks."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls, names in FILES.items():
            (root / split / cls).mkdir(parents=True)
            for name in names:
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / split / cls / name)
    return root


def expected_loss(targets):
    logp = torch.log_softmax(torch.tensor(BIAS), 0)
    return -float(sum(logp[t] for t in targets)) / len(targets)


def test_cli_eval_exact_accuracy_and_json(eval_folder, tmp_path, capsys):
    ckpt = constant_checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "r.json"
    argv = ["eval", "--checkpoint", str(ckpt), "--data", str(eval_folder), "--json", str(out), "--img-size", "32",
            "--batch-size", "4", "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 9
    assert r["top1"] == pytest.approx(100 * 3 / 9)  # every image predicted "b": the 3 b images are right
    assert r["top5"] == pytest.approx(100.0)  # k = min(5, 3 classes)
    assert r["loss"] == pytest.approx(expected_loss([0] * 4 + [1] * 3 + [2] * 2), rel=1e-5)
    assert r["backend"] == "eager" and r["crop_pct"] == 0.875 and r["img_size"] == 32
    assert "top-1 33.33%" in capsys.readouterr().out


def test_real_labels_follow_sorted_file_names(eval_folder, tmp_path):
    ds = build_dataset(str(eval_folder), "val")
    names = sorted(n for v in FILES.values() for n in v)  # img_01 ... img_09
    # ReaL list per sorted name: empty for img_02 and img_06 (excluded); contains 1 ("b") for img_03, img_05, img_07
    real = {n: [] if n in ("img_02.jpg", "img_06.png") else ([1, 2] if n in ("img_03.png", "img_05.png",
            "img_07.png") else [0]) for n in names}
    path = tmp_path / "real.json"
    path.write_text(json.dumps([real[n] for n in names]))
    labels = load_real_labels(path, ds)
    assert labels == [real[os.path.basename(p)] for p, _ in ds.samples]
    r = evaluate(lambda x: torch.tensor(BIAS).expand(len(x), 3), [(torch.zeros(9, 3, 4, 4), torch.tensor(
        [t for _, t in ds.samples]))], device=torch.device("cpu"), real_labels=labels, progress=False)
    assert r["real_images"] == 7 and r["real_top1"] == pytest.approx(3 / 7)
    ckpt = constant_checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(eval_folder), "--real-labels", str(path), "--json",
                 str(out), "--img-size", "32", "--workers", "0", "--no-progress"]) == 0
    assert json.loads(out.read_text())["real_top1"] == pytest.approx(100 * 3 / 7)


def test_bad_inputs_one_line(eval_folder, tmp_path, capsys):
    ckpt = constant_checkpoint(tmp_path / "m.safetensors")
    bad_real = tmp_path / "short.json"
    bad_real.write_text("[[1], [2]]")
    cases = [
        (["--checkpoint", str(tmp_path / "nope.pth"), "--data", str(eval_folder)], "not found"),
        (["--checkpoint", str(ckpt), "--data", str(tmp_path / "nodata")], "does not exist"),
        (["--checkpoint", str(ckpt), "--data", str(eval_folder), "--real-labels", str(bad_real)], "2 entries"),
        (["--checkpoint", str(ckpt), "--data", str(eval_folder), "--img-size", "8"], "too small"),
        (["--checkpoint", str(ckpt), "--data", str(eval_folder), "--img-size", "7", "--backend", "none"],
         "input size 7 px is too small for this model (its stem and pooling need at least 32 px)"),
        (["--checkpoint", str(ckpt), "--data", str(eval_folder), "--img-size", "4096", "--batch-size", "4096"],
         "--batch-size and --img-size (4096 x 3 x 4096 x 4096) make a 824.6 GB input batch, above the 4.3 GB limit"),
        (["--checkpoint", str(ckpt), "--data", str(eval_folder), "--crop-pct", "1.5"], "crop-pct"),
    ]
    for args, needle in cases:
        try:
            code = main(["eval", *args, "--workers", "0", "--no-progress"])
        except SystemExit as exit_:  # option values are checked by the parser (same one-line format)
            code = exit_.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    four = constant_checkpoint(tmp_path / "four.safetensors", bias=[0.0, 1.0, 0.0, 0.0], num_classes=4)
    assert main(["eval", "--checkpoint", str(four), "--data", str(eval_folder), "--workers", "0"]) == 2
    assert "3 classes but the model predicts 4" in capsys.readouterr().err


def test_small_dataset_and_train_form_fallback(tmp_path):
    """The synthetic set (labels cycle through 10 classes, 128 val images): a constant class-1 model scores 13/128.
    A train-form checkpoint with act_learn < 1 cannot be converted and is evaluated as it is."""
    ckpt = constant_checkpoint(tmp_path / "c.safetensors", bias=[0.0, 3.0] + [0.0] * 8, num_classes=10)
    out = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "synthetic", "--json", str(out), "--workers", "0",
                 "--no-progress", "--batch-size", "50"]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 128 and r["top1"] == pytest.approx(100 * 13 / 128) and r["img_size"] == 32
    train = build_variant("vanillanet_5", width_mult=1 / 32, num_classes=10).eval()
    train.act_learn = 0.5
    save_weights(train, tmp_path / "t.pth")
    assert main(["eval", "--checkpoint", str(tmp_path / "t.pth"), "--data", "synthetic", "--json", str(out),
                 "--workers", "0", "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["backend"] == "none" and r["images"] == 128 and math.isfinite(r["loss"])


def test_torchrun_two_processes_count_each_image_once(eval_folder, tmp_path):
    ckpt = constant_checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29537", "-m",
           "vanillanet", "eval", "--checkpoint", str(ckpt), "--data", str(eval_folder), "--json", str(out),
           "--img-size", "32", "--batch-size", "2", "--workers", "0", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["world_size"] == 2 and r["images"] == 9 and r["top1"] == pytest.approx(100 * 3 / 9)
