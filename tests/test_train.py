"""The training engine on CPU: end-to-end CLI run, deep-training schedule, EMA act_learn, exact resume after
SIGTERM, non-finite loss, fine-tuning, layer decay and the one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
from conftest import tiny_flags, tiny_sets
from PIL import Image

import vanillanet  # noqa: F401
from vanillanet import cli
from vanillanet.model.checkpoint_files import read_class_names
from vanillanet.model.network import VanillaNet
from vanillanet.model.variants import VARIANTS
from vanillanet.train import train
from vanillanet.training.builders import build_optimizer
from vanillanet.training.config import resolve_config
from vanillanet.training.deep_training import act_learn_schedule
from vanillanet.util.errors import NonFiniteLossError
from vanillanet.util.integrity import state_hash

VENV_BIN = Path(sys.executable).parent
# Tiny but complete: RandAugment + erasing, mixup/cutmix, BCE, dropout, LAMB, EMA, per-epoch act_learn.
CHANGES = dict(synthetic_size=64, epochs=3, decay_epochs=2, batch_size=8, seed=3)  # from conftest's TINY_TRAIN
TINY = tiny_flags(**CHANGES)
SUMMARY_KEYS = {"test_top1", "deploy_test_top1", "deploy_agreement", "seconds", "params_train", "params_deploy",
                "checkpoint", "deploy_weights", "plot", "best_top1", "macs_train", "macs_deploy"}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(out: Path, *extra: str, **kw):
    return resolve_config(None, kw, [*tiny_sets(**CHANGES), f"output={out}", *extra])


def straight_config(out: Path):
    """The run conftest's ``straight`` fixture trains once."""
    return tiny_cfg(out, "drop_rate=0.3")


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict) -> None:
    for key in ("model", "model_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), f"optimizer {i}.{k} differs"
    assert (a["step"], a["epoch"], a["act_learn"]) == (b["step"], b["epoch"], b["act_learn"])


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "vanillanet"), "train", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


# ---- end to end ---------------------------------------------------------------------------------------------
def test_cli_end_to_end_writes_every_output(tmp_path):
    out = tmp_path / "run"
    res = run_cli(*TINY, "--output", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("metrics.jsonl", "config.yaml", "summary.json", "model_deploy.safetensors", "training.png",
                 "best.pth", "checkpoint-00000024.pth"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert 0 <= summary["test_top1"] <= 1 and summary["deploy_agreement"] == 1.0
    assert summary["deploy_test_top1"] == summary["test_top1"]
    assert summary["params_deploy"] < summary["params_train"] and summary["act_learn"] == 1.0
    assert summary["checkpoint"] == str(out / "checkpoint-00000024.pth") and summary["steps"] == 24
    # lr scaling is announced (effective batch 8 vs the recipe's 1024)
    assert "-> lr" in res.stdout and "sqrt scaling" in res.stdout
    assert "epoch 3/3" in res.stdout and "identical predictions" in res.stdout
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["type"] == "epoch"] == [1, 2, 3]
    assert len([r for r in rows if r["type"] == "step"]) == 24
    ckpt = weights(out / "checkpoint-00000024.pth")  # everything loads with weights_only=True
    assert {"model", "model_ema", "optimizer", "scaler", "scheduler", "epoch", "step", "act_learn", "rng", "config",
            "class_names", "arch"} <= ckpt.keys()
    assert ckpt["config"]["epochs"] == 3 and ckpt["act_learn"] == 1.0
    assert read_class_names(out / "model_deploy.safetensors") == [f"class_{i}" for i in range(10)]
    assert "epochs: 3" in (out / "config.yaml").read_text()


# ---- deep training and EMA ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["linear", "cosine"])
def test_act_learn_schedule_per_step_reaches_one_and_ema_follows(tmp_path, mode):
    seen = []
    cfg = tiny_cfg(tmp_path, "act_learn_update=step", f"act_learn_mode={mode}", "epochs=2", "decay_epochs=1",
                   "mixup=0", "cutmix=0")
    summary = train(cfg, on_step=seen.append)
    spe = 8
    # the value used for step s (1-based) is set before its forward, at step s - 1
    expected = [act_learn_schedule((s - 1) / spe, 1, mode) for s in range(1, 17)]
    assert [r["act_learn"] for r in seen] == expected  # the slope is a plain float: exactly the schedule
    assert seen[spe]["act_learn"] == 1.0 and seen[-1]["act_learn"] == 1.0
    assert all(r["ema_act_learn"] == r["act_learn"] for r in seen)
    assert summary["act_learn"] == 1.0 and summary["deploy_agreement"] == 1.0
    assert not tdist.is_initialized()  # one process: no process group at all


def test_act_learn_per_epoch_is_the_original_rule(tmp_path):
    seen = []
    train(tiny_cfg(tmp_path, "mixup=0", "cutmix=0"), on_step=seen.append)
    assert [r["act_learn"] for r in seen[::8]] == [0.0, 0.5, 1.0]  # e / decay_epochs at the start of epoch e
    assert all(r["ema_act_learn"] == r["act_learn"] for r in seen)


# ---- exact resume -------------------------------------------------------------------------------------------
def test_resume_after_sigterm_is_bit_exact(tmp_path, straight):
    out = tmp_path / "interrupted"

    def kill_at_step_5(info):
        if info["step"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the real handler

    res = train(tiny_cfg(out, "drop_rate=0.3"), on_step=kill_at_step_5)
    assert res["status"] == "interrupted" and res["exit_code"] == 143 and res["signal"] == "SIGTERM"
    ckpt = weights(res["checkpoint"])
    assert ckpt["step"] == 6 and ckpt["epoch"] == 0 and ckpt["batch"] == 6  # mid-epoch
    assert not (out / "summary.json").exists()
    summary = train(tiny_cfg(out, "drop_rate=0.3", "resume=auto"))
    assert summary["status"] == "completed"
    assert_same_state(weights(straight[0] / "checkpoint-00000024.pth"), weights(out / "checkpoint-00000024.pth"))
    assert summary["test_top1"] == straight[1]["test_top1"]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["type"] == "step"] == list(range(1, 25))  # no duplicated rows


@pytest.mark.slow
def test_compiled_run_with_memory_batches_resumes_bit_exactly(tmp_path):
    """The main job's fast path (torch.compile of the model, in-memory batches, act_learn every step): a run
    stopped by SIGTERM mid-epoch and resumed (a fresh compile) ends with the same weights, EMA and optimiser
    state as an uninterrupted one. Slow (inductor compiles); .ci/run runs it."""
    fast = ("compile=true", "augment=light", "padding=0", "reprob=0", "act_learn_update=step", "epochs=2",
            "decay_epochs=1")

    def stop_at_step_5(info):
        if info["step"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    straight_run = train(tiny_cfg(tmp_path / "straight", *fast))
    res = train(tiny_cfg(tmp_path / "cut", *fast), on_step=stop_at_step_5)
    assert res["status"] == "interrupted" and weights(res["checkpoint"])["batch"] == 6
    resumed = train(tiny_cfg(tmp_path / "cut", *fast, "resume=auto"))
    last = f"checkpoint-{straight_run['steps']:08d}.pth"
    assert_same_state(weights(tmp_path / "straight" / last), weights(tmp_path / "cut" / last))
    assert resumed["test_top1"] == straight_run["test_top1"] and resumed["deploy_agreement"] == 1.0


def test_ctrl_c_to_cli_process_group_saves_and_resumes(tmp_path, straight):
    """SIGINT to the whole process group (as Ctrl-C sends it, data workers included): exit status 130, a
    checkpoint, and --resume auto (here with another worker count) finishes the run bit-for-bit."""
    out = tmp_path / "cli"
    proc = subprocess.Popen([str(VENV_BIN / "vanillanet"), "train", *TINY, "--drop-rate", "0.3", "--workers", "2",
                             "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr[-2000:]
    assert "SIGINT: saved" in stdout
    step = weights(next(out.glob("checkpoint-*.pth")))["step"]
    assert 2 <= step < 24
    res = run_cli(*TINY, "--drop-rate", "0.3", "--output", str(out), "--resume", "auto")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"step {step}" in res.stdout
    assert_same_state(weights(straight[0] / "checkpoint-00000024.pth"), weights(out / "checkpoint-00000024.pth"))


@pytest.mark.parametrize("aa_on_device", [False, True])
def test_fast_decoder_trains_a_jpeg_folder_and_resumes_bit_exactly(tmp_path, jpeg_folder, aa_on_device):
    """--decoder fast: uint8 crops from the workers, normalisation, RandomErasing and mixup (and with
    --aa-on-device RandAugment's operations) on the device; killed mid-epoch and resumed (with another worker
    count) it ends with the same weights as a straight run."""
    sets = ["decoder=fast", f"aa_on_device={str(aa_on_device).lower()}", f"data={jpeg_folder}", "img_size=32",
            "workers=1"]
    straight_out, out = tmp_path / "straight", tmp_path / "interrupted"
    done = train(tiny_cfg(straight_out, *sets))
    assert done["status"] == "completed"

    def kill_at_step_8(info):
        if info["step"] == 8:
            os.kill(os.getpid(), signal.SIGTERM)

    res = train(tiny_cfg(out, *sets), on_step=kill_at_step_8)
    assert res["status"] == "interrupted" and weights(res["checkpoint"])["batch"] == 3  # mid-epoch 2
    summary = train(tiny_cfg(out, *sets[:-1], "workers=0", "resume=auto"))
    last = "checkpoint-00000018.pth"  # 3 epochs x 48 images / 8
    assert_same_state(weights(straight_out / last), weights(out / last))
    assert summary["test_top1"] == done["test_top1"]


# ---- failures -----------------------------------------------------------------------------------------------
def test_non_finite_loss_stops_with_the_step(tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at step \d+ .*last good checkpoint") as info:
        train(tiny_cfg(out, "opt=sgd", "lr=1e6", "lr_base_scale=none", "warmup_epochs=0", "checkpoint_every=1"))
    assert "\n" not in str(info.value)
    step = int(str(info.value).split("at step ")[1].split()[0])
    # the checkpoint whose weights gave the non-finite loss is set aside; the newest kept one is the last verified
    assert (out / f"diverged-{step - 1:08d}.pth").is_file()
    kept = sorted(out.glob("checkpoint-*.pth"))
    assert kept and weights(kept[-1])["step"] == step - 2 and str(kept[-1]) in str(info.value)
    assert all(torch.isfinite(v).all() for v in weights(kept[-1])["model"].values() if v.is_floating_point())


def _image_folder(root: Path, train_classes: list[str], val_classes: list[str]) -> Path:
    for split, classes in (("train", train_classes), ("val", val_classes)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 90, 40, 200)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "synthetic", "--set", "lerning_rate=1"], "unknown config key 'lerning_rate'"),
        (["--recipe", "vanillanet_42"], "unknown recipe 'vanillanet_42'"),
        (["--data", "/nonexistent/images"], "dataset folder /nonexistent/images does not exist"),
        (["--data", "FOLDER", "--num-classes", "5"], "num_classes is 5 but"),
        (["--data", "MISMATCH"], "train/ and val/ have different classes"),
        (["--data", "synthetic", "--model", "resnet50"], "unknown model 'resnet50'"),
        (["--data", "synthetic", "--epochs", "3", "--decay-epochs", "3"], "decay_epochs (3) must be at most"),
        (["--data", "synthetic", "--warmup-epochs", "5"], "warmup_epochs (5) must be less than epochs (3)"),
        (["--data", "synthetic", "--batch-size", "7"], "mixup/cutmix need an even batch size"),
        (["--data", "synthetic", "--resume", "/nonexistent.pth"], "checkpoint /nonexistent.pth does not exist"),
        (["--data", "synthetic", "--pretrained", "/nonexistent.pth"], "/nonexistent.pth"),
        (["--data", "synthetic", "--lr", "fast"], "'lr' needs a float"),
        (["--data", "synthetic", "--freeze-stages", "9"], "freeze_stages is 9 but the model has 4 stages"),
        (["--data", "synthetic", "--opt", "adamq"], "unknown optimiser 'adamq'"),
        (["--data", "synthetic", "--layer-decay", "0.8", "--layer-decay-layers", "4"], "layer_decay_layers is 4"),
        (["--data", "FOLDER", "--decoder", "gpu"], "--decoder gpu decodes on the training GPU"),
        (["--data", "FOLDER", "--decoder", "fast", "--augment", "light"], "--decoder fast implements the timm"),
        (["--data", "synthetic", "--decoder", "nvjpeg"], "decoder"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, args, message):
    folder = _image_folder(tmp_path / "f", ["a", "b"], ["a", "b"])
    mismatch = _image_folder(tmp_path / "m", ["a", "b"], ["a", "c"])
    args = [{"FOLDER": str(folder), "MISMATCH": str(mismatch)}.get(a, a) for a in args]
    base = ["--width-mult", "0.0625", "--epochs", "3", "--decay-epochs", "1", "--warmup-epochs", "1", "--workers", "0",
            "--img-size", "32",
            "--synthetic-size", "16", "--batch-size", "4", "--output", str(tmp_path / "o")]
    assert cli.main(["train", *base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_fresh_run_refuses_a_folder_with_checkpoints(capsys, straight):
    assert cli.main(["train", *TINY, "--output", str(straight[0])]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_resume_refuses_a_weights_only_file(tmp_path, capsys, straight):
    args = ["train", *TINY, "--output", str(tmp_path), "--resume", str(straight[0] / "model_deploy.safetensors")]
    assert cli.main(args) == 2
    assert "not a training state; use --pretrained" in capsys.readouterr().err


# ---- fine-tuning --------------------------------------------------------------------------------------------
def test_finetune_new_head_and_frozen_stages(tmp_path, straight, capsys):
    pretrained = straight[0] / "best.pth"
    out = tmp_path / "ft"
    cfg = tiny_cfg(out, "num_classes=4", f"pretrained={pretrained}", "freeze_stages=2", "decay_epochs=0",
                   "epochs=1", "warmup_epochs=0", "mixup=0", "cutmix=0")
    summary = train(cfg)
    assert "new 4-class head" in capsys.readouterr().out
    assert summary["num_classes"] == 4 and summary["deploy_agreement"] == 1.0
    before, after = weights(pretrained)["model_ema"], weights(summary["checkpoint"])["model"]
    frozen = [k for k in before if k.startswith(("stem", "stages.0."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # weights and BN statistics
    assert not torch.equal(before["stages.1.conv1.0.weight"], after["stages.1.conv1.0.weight"])
    assert after["cls2.0.weight"].shape == (4, 4, 1, 1)


# ---- optimiser groups ---------------------------------------------------------------------------------------
def test_layer_decay_and_weight_decay_groups_vanillanet_6():
    cfg = resolve_config("vanillanet_6")
    spec = VARIANTS["vanillanet_6"]
    model = VanillaNet(dims=spec.dims, strides=spec.strides, width_mult=1 / 32, num_classes=10)
    opt = build_optimizer(model, cfg.optim, lr=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    scale, decay = {}, {}
    for g in opt.param_groups:
        for p in g["params"]:
            scale[names[id(p)]], decay[names[id(p)]] = g["lr_scale"], g["weight_decay"]
    expected = {"stem": 0.32768, "stages.0.": 0.4096, "stages.1.": 0.512, "stages.2.": 0.64, "stages.3.": 0.8,
                "cls": 1.0}
    for name, s in scale.items():
        want = next(v for k, v in expected.items() if name.startswith(k))
        assert s == pytest.approx(want, rel=1e-12), name
    assert set(scale) == set(names.values())
    for name, d in decay.items():
        one_d = model.get_parameter(name).ndim == 1
        assert d == (0.0 if one_d else 0.32), name
    assert decay["stages.0.act.weight"] == 0.32 and decay["stem2.2.weight"] == 0.32  # depthwise activation weights
    assert decay["stages.0.act.bn.weight"] == 0.0 and decay["stages.0.conv1.0.bias"] == 0.0
    assert type(opt).__name__ == "Lamb" and opt.defaults["eps"] == 1e-8 and opt.defaults["max_grad_norm"] == 1.0


def test_state_hash_sees_every_byte():
    a = {"w": torch.zeros(3)}
    b = {"w": torch.zeros(3)}
    assert state_hash(a) == state_hash(b)
    b["w"][1] = 1e-30
    assert state_hash(a) != state_hash(b)


# ---- it learns, and the optional paths run ------------------------------------------------------------------
def test_training_learns_the_synthetic_task(tmp_path):
    cfg = tiny_cfg(tmp_path, "synthetic_size=256", "batch_size=16", "epochs=4", "augment=none", "mixup=0", "cutmix=0",
                   "opt=adamw", "lr=3e-3", "lr_base_scale=none", "model_ema=false", "bce_loss=false",
                   "act_learn_update=step", "channels_last=true", "act_num=2")
    summary = train(cfg)
    assert summary["test_top1"] >= 0.6 and summary["deploy_agreement"] == 1.0  # chance is 0.1
    assert summary["evaluated"] == "model" and summary["checkpoint"]


def test_bf16_accumulation_clipping_workers(tmp_path):
    cfg = tiny_cfg(tmp_path, "epochs=2", "decay_epochs=1", "amp_dtype=bfloat16", "grad_accum_steps=2",
                   "clip_grad=1.0", "clip_mode=norm", "workers=2", "opt=adamw", "layer_decay=0.8")
    seen = []
    summary = train(cfg, on_step=seen.append)
    assert summary["steps"] == 8 and len(seen) == 8  # 64 images / (8 x 2) per step x 2 epochs
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in seen)
    assert summary["deploy_agreement"] == 1.0
