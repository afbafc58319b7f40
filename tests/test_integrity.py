"""Soundness and integrity of what we read and write: unusable weights, stride-0 tensors, SHA-256 digests, checked
metadata, size limits on inferred architectures, and files whose name lies about their format."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import build_variant
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vanillanet.model.checkpoint_files import file_meta, load_checkpoint_file, save_weights
from vanillanet.model.registry import MAX_PARAMS, create_model
from vanillanet.model.reparam import reparameterize_model
from vanillanet.util.errors import CheckpointError, ConfigError
from vanillanet.util.integrity import MAX_ABS, digest, expanded, nonfinite, state_hash, unsound


@pytest.fixture(scope="module")
def deploy_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    save_weights(reparameterize_model(build_variant("vanillanet_5", num_classes=10)), path,
                 class_names=[str(i) for i in range(10)], extra_meta={"img_size": 32})
    return path


def foreign_copy(src, dst, **meta_changes):
    """``src`` re-saved as another tool would write it (no digest), with metadata entries changed."""
    with safe_open(str(src), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
    meta.update({k: v if isinstance(v, str) and k == "class_names" else json.dumps(v) for k, v in
                 meta_changes.items()})
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


# ---- the checks themselves -----------------------------------------------------------------------------------
def test_unsound_names_each_kind_of_bad_value():
    sd = {"a.weight": torch.ones(3), "b.running_var": torch.ones(3), "c.running_mean": torch.zeros(2),
          "n": torch.tensor([1.0, float("nan")]), "i": torch.tensor([float("-inf")]),
          "big": torch.tensor([MAX_ABS * 2]), "v.running_var": torch.tensor([1.0, -1e-3]),
          "steps": torch.tensor(5), "empty": torch.zeros(0)}
    assert unsound(("m", sd)) == ["m.n (NaN)", "m.i (inf)", "m.big (|value| up to 3.7e+19)",
                                  "m.v.running_var (negative variance)"]
    # a variance is a square: large running statistics are fine, a zero variance (dead channel) too
    assert not unsound(("m", {"x.running_var": torch.tensor([1e30, 0.0]), "x.running_mean": torch.tensor([1e25])}))
    assert nonfinite(("opt", {0: {"exp_avg_sq": torch.tensor([1e30])}})) == []
    assert nonfinite(("opt", {0: {"exp_avg": torch.tensor([float("nan")])}})) == ["opt.0.exp_avg"]


def test_expanded_tensors_are_found():
    real = torch.zeros(4, 4)
    assert expanded({"a": real, "b": real[1:], "c": torch.zeros(1).expand(1000, 1000)}) == ["c"]


def test_digest_sees_every_byte_name_and_dtype_but_not_mapping_order():
    a = {"w": torch.arange(6.0).reshape(2, 3), "meta": {"step": 3, "names": ["x", "y"]}}
    assert digest(a) == digest({"meta": {"names": ["x", "y"], "step": 3}, "w": torch.arange(6.0).reshape(2, 3)})
    assert digest(a) == digest({**a, "w": torch.arange(6.0).reshape(3, 2).t().contiguous().t().reshape(2, 3)})
    for changed in ({**a, "w": a["w"].clone().index_fill_(1, torch.tensor([2]), 1e-30)},
                    {**a, "w": a["w"].double()}, {**a, "w": a["w"].reshape(3, 2)},
                    {**a, "meta": {"step": 4, "names": ["x", "y"]}}, {"v": a["w"], "meta": a["meta"]}):
        assert digest(changed) != digest(a)
    assert state_hash({"w": torch.zeros(2, dtype=torch.bfloat16)}) != state_hash({"w": torch.zeros(2)})


# ---- files we write carry a digest, verified on reading ------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_changed_bytes_are_detected(deploy_file, tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    save_weights(create_model(None, deploy_file), path)
    load_checkpoint_file(path)  # intact
    data = bytearray(path.read_bytes())
    sd = load_checkpoint_file(path)["state_dict"]
    needle = sd["stages.0.conv.weight"].contiguous().numpy().tobytes()[:16]
    at = bytes(data).index(needle)  # the first bytes of a tensor, wherever the format stores them
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the SHA-256 digest it was written with") as info:
        create_model(None, path)
    assert "\n" not in str(info.value)


def test_files_without_a_digest_still_load(deploy_file, tmp_path):
    model = create_model(None, foreign_copy(deploy_file, tmp_path / "foreign.safetensors"))
    assert model.checkpoint_meta["class_names"] == [str(i) for i in range(10)]


def test_unsound_weights_are_never_written(deploy_file, tmp_path):
    model = create_model(None, deploy_file)
    with torch.no_grad():
        model.stages[0].conv.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"not writing .*: the weights are unusable \(stages.0.conv.weight"):
        save_weights(model, tmp_path / "bad.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unsound_weights_are_refused_on_loading(deploy_file, tmp_path):
    sd = load_file(str(deploy_file))
    sd["stages.1.act.bias"][0] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match=r"nan.safetensors holds unusable weights \(stages.1.act.bias \(NaN\)\)"):
        create_model(None, tmp_path / "nan.safetensors")


# ---- what a file records is checked like any setting ---------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    (dict(act_learn="abc"), r"malformed act_learn \('abc', not a finite number\)"),
    (dict(act_learn=1.5), r"impossible act_learn \(act_learn must be at most 1, got 1.5\)"),
    (dict(strides=7), r"malformed strides \(7, not a list\)"),
    (dict(img_size="big"), r"malformed img_size \('big', not an integer\)"),
    (dict(mean="x"), r"malformed mean \('x', not a list\)"),
    (dict(std=[0.0]), r"impossible std \(std must be more than 0, got 0.0\)"),
    (dict(class_names="catdogbird"), r"malformed class_names \('catdogbird', not a list\)"),
])
def test_malformed_metadata_is_one_line(deploy_file, tmp_path, change, message):
    path = foreign_copy(deploy_file, tmp_path / "edited.safetensors", **change)
    with pytest.raises(CheckpointError, match=message) as info:
        create_model(None, path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_one_dimensional_stem_weight_is_one_line(deploy_file, tmp_path):
    sd = load_file(str(deploy_file))
    sd["stem.0.weight"] = sd["stem.0.weight"].flatten()
    save_file(sd, str(tmp_path / "flat.safetensors"))
    with pytest.raises(CheckpointError, match=r"stem.0.weight has shape \(\d+,\), not the 4-D shape"):
        create_model(None, tmp_path / "flat.safetensors")


def test_a_pth_named_safetensors_is_read_by_its_content(deploy_file, tmp_path):
    pth = tmp_path / "m.pth"
    save_weights(create_model(None, deploy_file), pth)
    renamed = tmp_path / "really_a.safetensors"
    shutil.copy(pth, renamed)
    assert create_model(None, renamed).checkpoint_meta["format"] == "pth"
    assert file_meta(renamed)["form"] == "deploy"  # timm's pretrained hook reads metadata this way


# ---- size limits: refused before anything is allocated -------------------------------------------------------
def test_stride_zero_tensors_are_refused(deploy_file, tmp_path):
    sd = load_file(str(deploy_file))
    c = sd["cls.2.weight"].shape[1]
    sd["cls.2.weight"] = torch.zeros(1, 1, 1, 1).expand(2_000_000, c, 1, 1)
    sd["cls.2.bias"] = torch.zeros(1).expand(2_000_000)
    torch.save({"model": sd}, tmp_path / "bomb.pth")
    assert (tmp_path / "bomb.pth").stat().st_size < 1_000_000  # claims 2e6 x C floats
    with pytest.raises(CheckpointError, match="holds tensors larger than the data stored for them"):
        create_model(None, tmp_path / "bomb.pth")


def test_an_implied_model_above_the_limit_is_refused(tmp_path):
    model = build_variant("vanillanet_5", num_classes=10)
    sd = model.state_dict()
    sd["cls2.0.weight"] = torch.zeros(300_000, 1, 1, 1)  # 1.2 MB, but the train-form head is 300k x 300k
    torch.save({"model": sd}, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match=r"implies a train-form vanillanet_5 of 90.1 billion parameters \(90.1 "
                                          r"billion of them in the 300,000-class head.*--allow-large"):
        create_model(None, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match="above the limit of 1.0 billion"):
        create_model("vanillanet_5", num_classes=2_000_000)
    with torch.device("meta"):  # the largest variant, full width, is well within the limit
        largest = create_model("vanillanet_13_x1_5")
    assert 0.2 * MAX_PARAMS < sum(p.numel() for p in largest.parameters()) < 0.3 * MAX_PARAMS
