"""Parameters and MACs: the published table for every variant, and the list / info commands."""

import json

import pytest
import torch
from conftest import build_variant

from vanillanet.cli import main as cli_main
from vanillanet.complexity import count_macs, count_params, matches_published, model_complexity
from vanillanet.model.variants import PUBLISHED, PUBLISHED_TRAIN, VARIANTS
from vanillanet.util.errors import ConfigError

PUBLISHED_ROWS = [(name, "deploy", (row.params_m, row.gmacs)) for name, row in PUBLISHED.items()] + [
    (name, "train", row) for name, row in PUBLISHED_TRAIN.items()]


@pytest.mark.parametrize("name,form,published", PUBLISHED_ROWS, ids=[f"{n}-{f}" for n, f, _ in PUBLISHED_ROWS])
def test_counts_match_the_published_table(name, form, published):
    c = model_complexity(name)
    assert matches_published(c[form]["params"] / 1e6, published[0])
    assert matches_published(c[form]["macs"] / 1e9, published[1])
    assert c["train"]["params"] > c["deploy"]["params"] and c["train"]["macs"] > c["deploy"]["macs"]


def test_every_variant_has_a_published_row():
    assert list(PUBLISHED) == list(VARIANTS)


def test_exact_counts_of_vanillanet_5():
    c = model_complexity("vanillanet_5")
    assert c["train"]["params"] == 22_328_800 and c["deploy"]["params"] == 15_523_304  # docs/models.md
    # deploy MACs by hand: stem 4x4 conv at 56x56, the block 1x1 convs at 56/28/14 before pooling, the depthwise
    # 7x7 activations after it, and the head (1x1 conv on the pooled vector)
    dims, sizes = (512, 1024, 2048, 4096), (56, 28, 14, 7)
    macs = 56 * 56 * 512 * 3 * 16 + 56 * 56 * 512 * 49
    for i in range(3):
        macs += sizes[i] ** 2 * dims[i] * dims[i + 1] + sizes[i + 1] ** 2 * dims[i + 1] * 49
    macs += 4096 * 1000
    assert c["deploy"]["macs"] == macs


def test_matches_published_uses_printed_precision():
    assert matches_published(5.161, "5.2") and not matches_published(5.26, "5.2")
    assert matches_published(48.9825, "48.98") and not matches_published(48.9825, "48.9")


def test_meta_and_cpu_counts_agree():
    torch.manual_seed(0)
    model = build_variant("vanillanet_13_x1_5_ada_pool", num_classes=7)
    with torch.device("meta"):
        meta_model = build_variant("vanillanet_13_x1_5_ada_pool", num_classes=7)
    assert count_params(model) == count_params(meta_model)
    assert count_macs(model, (3, 64, 64)) == count_macs(meta_model, (3, 64, 64)) > 0
    assert model.training  # the mode is restored


def test_options_change_the_counts():
    base = model_complexity("vanillanet_5", 64, width_mult=0.125)
    assert base["img_size"] == 64 and "published_deploy" not in base
    bigger = model_complexity("vanillanet_5", 128, width_mult=0.125)
    assert bigger["deploy"]["macs"] > 3.9 * base["deploy"]["macs"] - 4096 * 1000
    act4 = model_complexity("vanillanet_5", 64, width_mult=0.125, act_num=4)
    assert act4["deploy"]["params"] - base["deploy"]["params"] == (81 - 49) * (64 + 128 + 256 + 512)


def test_bad_requests():
    with pytest.raises(ConfigError, match="unknown model"):
        model_complexity("vanillanet_99")
    with pytest.raises(ConfigError, match="larger --img-size"):
        model_complexity("vanillanet_5", 4)


def test_list_command(capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("vanillanet_")]
    assert len(rows) == len(VARIANTS) and all(row.endswith("ok") for row in rows)
    assert "MACs = multiply-accumulates" in out
    assert rows[0].split()[:5] == ["vanillanet_5", "22.3", "M", "8.45", "G"]


def test_info_command(capsys):
    assert cli_main(["info", "vanillanet_13", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["published_deploy"] == {"params_m": 58.6, "gmacs": 11.9}
    assert c["deploy"]["params"] == 58_590_184
    assert cli_main(["info", "vanillanet_5", "--img-size", "64", "--width-mult", "0.125"]) == 0
    out = capsys.readouterr().out
    assert "vanillanet_5 at 64x64 (width_mult=0.125)" in out and "deploy" in out and "published" not in out
    assert cli_main(["info", "vanillanet_5", "--img-size", "8"]) == 2
    assert "larger --img-size" in capsys.readouterr().err


def test_list_shows_a_variant_without_published_numbers(capsys, monkeypatch):
    """A new variant is one line in VARIANTS: `list` shows it before its published numbers exist (no check)."""
    from vanillanet.model.variants import PUBLISHED

    monkeypatch.delitem(PUBLISHED, "vanillanet_5")
    assert cli_main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("vanillanet_5 "))
    assert row.split()[-2:] == ["-", "-"] and row.split()[1:3] == ["22.3", "M"]
