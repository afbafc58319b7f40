"""``vanillanet shards``: the command, its one-line errors, and training from shards (locally and from an S3
store on the loopback), killed mid-epoch and resumed bit-exactly."""

from __future__ import annotations

import json
import os
import signal
import tempfile

import pytest
import torch
from conftest import make_image_tree

from vanillanet import cli
from vanillanet.data import remote
from vanillanet.data.shards import ShardDataset


@pytest.fixture
def tree(tmp_path):
    return make_image_tree(tmp_path / "src", train=8, val=3)


def test_command_writes_then_verifies(tree, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["shards", str(tree), str(out), "--shard-size", "5", "--max-side", "16", "--quality", "85", "-j", "2",
            "--no-progress"]
    assert cli.main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tree} -> {out / 'manifest.json'}: train 24, val 9 images, 3 classes, 7 shards "
                           "(7 written, 0 verified and kept)")
    assert cli.main(args) == 0
    assert "(0 written, 7 verified and kept)" in capsys.readouterr().out
    assert ShardDataset(str(out), "val")[0][0].size == (16, 12)


@pytest.mark.parametrize("extra, message", [
    (["--quality", "100"], "--quality 100 is above 95"),
    (["--shard-size", "0"], "--shard-size"),
    (["--max-side", "4"], "--max-side"),
])
def test_command_refuses_bad_options(tree, tmp_path, capsys, extra, message):
    try:
        code = cli.main(["shards", str(tree), str(tmp_path / "out"), *extra])
    except SystemExit as exit_:  # argparse's own checks
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_command_bad_inputs_are_one_line_errors(tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a closed port on the loopback: never the internet
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    monkeypatch.setenv("VANILLANET_IO_TIMEOUT", "5")
    monkeypatch.setenv("VANILLANET_IO_RETRIES", "1")
    remote._FILESYSTEMS.clear()
    (tmp_path / "empty").mkdir()
    (tree / "train" / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    cases = [
        ([str(tmp_path / "empty"), str(tmp_path / "o")], "one subfolder per class"),
        ([str(tree), str(tmp_path / "strict"), "--strict", "--shard-size", "3", "-j", "2"],
         "cannot read train sample ant/broken.jpg"),
        ([str(tree), str(tree / "train" / "out")], "inside SRC"),
        (["s3://bucket/x", str(tmp_path / "o")], "cannot reach s3://bucket/x/manifest.json"),
        ([str(tree), "s3://bucket/out", "--shard-size", "5", "-j", "2"], "cannot reach s3://bucket/out/"),
    ]
    staging = tmp_path / "staging"  # where uploads are staged (the system's temporary folder): emptied again
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    for args, message in cases:
        assert cli.main(["shards", *args, "--no-progress"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "src", "staging", "strict"]
    assert not list(staging.iterdir())
    # the refused run stopped at the bad image: complete shards only (tar and index), no manifest, no temporaries
    names = sorted(p.name for p in (tmp_path / "strict").iterdir())
    tars = [n for n in names if n.endswith(".tar")]
    assert names == sorted(tars + [n[:-4] + ".idx.json" for n in tars])
    remote._FILESYSTEMS.clear()


def test_command_counts_skips(tree, tmp_path, capsys):
    (tree / "train" / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    assert cli.main(["shards", str(tree), str(tmp_path / "o"), "--no-progress"]) == 0
    assert "1 unreadable images skipped (listed in the manifest)" in capsys.readouterr().out


# ---- training from shards ------------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(data: str, out, *extra: str):
    from vanillanet.training.config import resolve_config

    sets = [f"data={data}", "width_mult=0.0625", "epochs=1", "decay_epochs=0", "warmup_epochs=0", "batch_size=4",
            "workers=0", "img_size=32", "progress=false", "seed=3", "log_every=1", "mixup=0", "cutmix=0",
            f"output={out}", *extra]
    return resolve_config(None, {}, sets)


def _final_weights(out) -> dict:
    path = max(out.glob("checkpoint-*.pth"))
    return torch.load(path, map_location="cpu", weights_only=True)


def _train_killed_and_resumed(data: str, out, kill_at: int, *extra: str) -> dict:
    from vanillanet.train import train

    def kill(info):
        if info["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the real handler

    res = train(_cfg(data, out, *extra), on_step=kill)
    assert res["status"] == "interrupted"
    ckpt = torch.load(res["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and 0 < ckpt["batch"] < 6  # mid-epoch
    summary = train(_cfg(data, out, "resume=auto", *extra))
    assert summary["status"] == "completed"
    return summary


def _assert_same(a: dict, b: dict) -> None:
    for key in ("model", "model_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    assert a["step"] == b["step"]


def test_train_from_local_shards_through_the_cli(tree, tmp_path, capsys):
    out = tmp_path / "shards"
    assert cli.main(["shards", str(tree), str(out), "--shard-size", "7", "--no-progress"]) == 0
    flags = ["--epochs", "1", "--decay-epochs", "0", "--warmup-epochs", "0", "--img-size", "32", "--workers", "0",
             "--width-mult", "0.0625", "--batch-size", "8", "--no-progress"]
    for data in (out, out / "manifest.json", f"file://{out}"):
        run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        assert cli.main(["train", "--data", str(data), "--output", str(run), *flags]) == 0, capsys.readouterr().err
        assert list(run.glob("checkpoint-*.pth"))
    assert cli.main(["eval", "--checkpoint", str(run / "model_deploy.safetensors"), "--data",
                     str(out / "manifest.json"), "--workers", "0", "--no-progress", "--json",
                     str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["images"] == 9  # the val split, every image
    # a corrupt image inside a shard: a counted skip, or with --strict-data a one-line error (exit 2)
    index = json.loads((out / "train-000000.idx.json").read_text())
    raw = bytearray((out / "train-000000.tar").read_bytes())
    start, size = index["offsets"][0], index["sizes"][0]
    raw[start:start + size] = b"\0" * size  # the first image's bytes, its length (and so the index) unchanged
    (out / "train-000000.tar").write_bytes(bytes(raw))
    capsys.readouterr()
    code = cli.main(["train", "--data", str(out), "--output", str(tmp_path / "strict"), "--strict-data", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot decode sample" in err and len(err.splitlines()) == 1, err


def test_train_from_local_shards_killed_mid_epoch_resumes_bit_exactly(tree, tmp_path):
    from vanillanet.data.shard_writer import WriteSettings, write_shards
    from vanillanet.train import train

    data = str(tmp_path / "shards" / "manifest.json")
    write_shards(str(tree), str(tmp_path / "shards"), WriteSettings(shard_size=5), progress=False)
    assert train(_cfg(data, tmp_path / "straight", "workers=2"))["status"] == "completed"
    _train_killed_and_resumed(data, tmp_path / "resumed", 2)  # in the main process this time
    _assert_same(_final_weights(tmp_path / "straight"), _final_weights(tmp_path / "resumed"))


def test_train_from_s3_killed_mid_epoch_resumes_bit_exactly(tree, tmp_path, s3_bucket, capsys):
    url = f"{s3_bucket}/flowers"
    assert cli.main(["shards", str(tree), url, "--shard-size", "5", "--no-progress"]) == 0
    assert "7 shards (7 written" in capsys.readouterr().out
    assert cli.main(["shards", str(tree), url, "--shard-size", "5", "--no-progress"]) == 0
    assert "(0 written, 7 verified and kept)" in capsys.readouterr().out
    from vanillanet.train import train

    straight = train(_cfg(url, tmp_path / "straight"))
    assert straight["status"] == "completed"
    _train_killed_and_resumed(url, tmp_path / "resumed", 3, "workers=2")  # another worker count, forked readers
    _assert_same(_final_weights(tmp_path / "straight"), _final_weights(tmp_path / "resumed"))
    remote._FILESYSTEMS.clear()


def test_s3_errors_are_one_line(tree, tmp_path, s3_bucket, monkeypatch, capsys):
    url = f"{s3_bucket}/flowers"
    assert cli.main(["shards", str(tree), url, "--shard-size", "12", "--no-progress"]) == 0
    capsys.readouterr()
    staging = tmp_path / "staging"  # uploads are staged in the system's temporary folder, and removed
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    code = cli.main(["shards", str(tree), "s3://no-such-bucket/flowers", "--shard-size", "12", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot write s3://no-such-bucket/flowers/" in err and "create the bucket" in err, err
    assert len(err.splitlines()) == 1
    assert not list(staging.iterdir())
    fs, path = remote.filesystem(url)
    fs.rm(f"{path}/train-000001.tar")
    cases = [({}, "train-000001.tar is listed in the manifest but missing"),
             ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "was refused"),
             ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach"),
             ({"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"}, "check the credentials")]
    for env, message in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            remote._FILESYSTEMS.clear()
            code = cli.main(["train", "--data", url, "--output", str(tmp_path / "run"), "--epochs", "1",
                             "--decay-epochs", "0", "--warmup-epochs", "0", "--img-size", "32", "--workers", "0",
                             "--width-mult", "0.0625", "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
    remote._FILESYSTEMS.clear()
