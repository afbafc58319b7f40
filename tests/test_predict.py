"""vanillanet predict on real PNG/JPEG files written here, a corrupt file, folders, class names, JSON output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_evaluate import BIAS, constant_checkpoint

from vanillanet.cli import main


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(folder / "sub" / "b.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / "gray.png")  # mode L -> RGB
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image, ignored in folders")
    return folder


def test_predict_text_with_checkpoint_class_names(images, tmp_path, capsys):
    ckpt = constant_checkpoint(tmp_path / "m.safetensors")
    assert main(["predict", str(images), "--checkpoint", str(ckpt), "--topk", "2", "--img-size", "32"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 3
    p = torch.softmax(torch.tensor(BIAS), 0)
    assert all(f": b ({100 * p[1]:.1f}%), c ({100 * p[2]:.1f}%)" in line for line in lines)
    assert "broken.jpg: cannot read image" in captured.err and "notes.txt" not in captured.err


def test_predict_json_imagenet_names_and_missing(images, tmp_path, capsys):
    bias = [0.0] * 1000
    bias[1] = 4.0
    ckpt = constant_checkpoint(tmp_path / "in1k.safetensors", bias=bias, num_classes=1000)
    # this checkpoint records class_0..class_999, so drop the names to exercise ImageNet's
    from vanillanet.model.checkpoint_files import save_weights
    from vanillanet.model.registry import create_model

    save_weights(create_model(None, ckpt), tmp_path / "plain.safetensors")
    argv = ["predict", str(images / "a.png"), str(images / "sub" / "b.jpg"), str(tmp_path / "missing.png"),
            "--checkpoint", str(tmp_path / "plain.safetensors"), "--json", "--topk", "1", "--img-size", "32"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    by_path = {r["path"]: r for r in out}
    assert by_path[str(images / "a.png")]["predictions"][0]["name"] == "goldfish, Carassius auratus"
    assert by_path[str(images / "sub" / "b.jpg")]["predictions"][0]["index"] == 1
    assert "no such file" in by_path[str(tmp_path / "missing.png")]["error"]


def test_predict_fails_only_when_nothing_readable(images, tmp_path, capsys):
    ckpt = constant_checkpoint(tmp_path / "m.safetensors")
    assert main(["predict", str(images / "broken.jpg"), "--checkpoint", str(ckpt), "--img-size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "cannot read image" in err[0] and "none of the 1 inputs" in err[-1]
    assert main(["predict", str(tmp_path / "nothing"), "--checkpoint", str(ckpt)]) == 2
    assert "none of the 1 inputs" in capsys.readouterr().err


def test_predict_limits_and_sixteen_bit_images(tmp_path, capsys):
    from conftest import build_variant, give_realistic_bn_stats

    from vanillanet.model.checkpoint_files import save_weights
    from vanillanet.model.reparam import reparameterize_model

    torch.manual_seed(0)  # random weights and statistics: the prediction depends on the pixels
    model = build_variant("vanillanet_5", width_mult=1 / 32, num_classes=5)
    give_realistic_bn_stats(model, (2, 3, 32, 32))
    ckpt = tmp_path / "m.safetensors"
    save_weights(reparameterize_model(model), ckpt)
    gray = np.linspace(0, 255, 32 * 32).reshape(32, 32).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # the same picture in 16 bits
    Image.new("L", (32, 32), 255).save(tmp_path / "white.png")  # what the 16-bit one became before
    Image.new("RGB", (3000, 20)).save(tmp_path / "wide.png")  # small, but its resize to 32 px would be 4800x32
    names = ("g8", "g16", "white", "wide")
    argv = ["predict", *(str(tmp_path / f"{n}.png") for n in names), "--checkpoint", str(ckpt), "--img-size", "32",
            "--json", "--topk", "5"]
    assert main(argv) == 0
    got = {r["path"]: r for r in json.loads(capsys.readouterr().out)}
    g8, g16, white, wide = (got[str(tmp_path / f"{n}.png")] for n in names)
    assert "aspect ratio above 100:1" in wide["error"]
    assert g8["predictions"] == g16["predictions"] != white["predictions"]
    assert main([*argv, "--allow-large"]) == 0
    assert all("error" not in r for r in json.loads(capsys.readouterr().out))


def test_a_huge_line_image_under_a_memory_limit_is_one_error_line(tmp_path):
    """Issue 17, finding 5: ``--allow-large`` on a 1 x 600,000 image, whose resize needs gigabytes, in a process
    with a memory limit: the image gets one error line (no MemoryError traceback) and a readable one still gets its
    prediction."""
    import os
    import subprocess
    import sys

    ckpt = constant_checkpoint(tmp_path / "m.safetensors")
    Image.new("RGB", (600_000, 1)).save(tmp_path / "line.png")
    Image.new("RGB", (40, 40), (9, 99, 199)).save(tmp_path / "ok.png")
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30)); "
              "from vanillanet.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", script, "predict", "--checkpoint", str(ckpt), "--img-size", "32", "--allow-large",
            "--threads", "1", str(tmp_path / "line.png")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    alone = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert alone.returncode == 2 and "Traceback" not in alone.stderr and "MemoryError" not in alone.stderr
    assert alone.stderr.splitlines()[0] == (f"vanillanet predict: {tmp_path / 'line.png'}: cannot read image (not "
                                            "enough memory to decode and resize it; crop or shrink it)")
    both = subprocess.run([*argv, str(tmp_path / "ok.png"), "--json"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert both.returncode == 0, both.stderr
    rows = {r["path"]: r for r in json.loads(both.stdout)}
    assert "not enough memory" in rows[str(tmp_path / "line.png")]["error"]
    assert rows[str(tmp_path / "ok.png")]["predictions"][0]["name"] == "b"  # the constant model's top class
