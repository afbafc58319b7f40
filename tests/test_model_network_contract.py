"""The timm model contract, run over every variant in the table, in both forms, at 1/16 width.

A new variant is covered by adding its line to ``models.VARIANTS``. Per (variant, form) one model is built and given
realistic BN statistics (the deploy form is converted from such a train form, so that its deep stacks do not shrink
the signal to nothing); tests that change a model work on a copy. Graph captures (FX, TorchScript, torch.export)
must reproduce eager fp32 outputs to ``TOL`` relative error. The inputs are non-square so that height and width
cannot be mixed up; the second size makes the shape-generic captures (FX, TorchScript) and the feature strides
meet other map sizes.
"""

from __future__ import annotations

import copy
import functools
import io

import pytest
import timm
import torch
from conftest import give_realistic_bn_stats
from timm.models._features_fx import create_feature_extractor as timm_fx_extractor
from timm.models._features_fx import get_graph_node_names
from torchvision.models.feature_extraction import create_feature_extractor

from vanillanet.model.geometry import feature_map_sides
from vanillanet.model.network import VanillaNet
from vanillanet.model.reparam import rel_err, reparameterize_model
from vanillanet.model.variants import VARIANTS, default_out_indices

FORMS = ("train", "deploy")
CASES = [pytest.param(name, form, id=f"{name}-{form}") for name in VARIANTS for form in FORMS]


def _structure(name: str) -> tuple:
    """What a graph capture can tell apart: the stride pattern with runs of stride-1 blocks collapsed, and the
    pooling design (widths and the number of repeated blocks run the same code)."""
    spec = VARIANTS[name]
    strides = [s for i, s in enumerate(spec.strides) if not (s == 1 and i and spec.strides[i - 1] == 1)]
    return tuple(strides), spec.ada_pool is not None


_FIRST_OF_STRUCTURE = {_structure(name): name for name in reversed(VARIANTS)}  # reversed: the first name wins
# TorchScript and torch.export cost 1-5 s per model: the default run captures the first variant of each structure
# (vanillanet_5, 6, 7, 8 and the ada_pool design, both forms); the other variants repeat one of these, and run
# with -m slow.
CAPTURE_CASES = [
    pytest.param(name, form, id=f"{name}-{form}",
                 marks=() if _FIRST_OF_STRUCTURE[_structure(name)] == name else pytest.mark.slow)
    for name in VARIANTS for form in FORMS
]
WIDTH = 1 / 16
NUM_CLASSES = 5
HW = (64, 48)  # the last maps of the stride-32 variants are 2x1: the activation's kernel trimming runs
OTHER_HW = (40, 72)
TOL = 1e-6


def _input(hw: tuple[int, int] = HW, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed))


def _create(name: str, form: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, deploy=form == "deploy", width_mult=WIDTH, **kwargs)


@functools.cache
def _built(name: str, form: str) -> VanillaNet:
    """The shared model of a case, in eval mode (act_learn 1, as created)."""
    torch.manual_seed(0)
    train = _create(name, "train", num_classes=NUM_CLASSES)
    give_realistic_bn_stats(train, (4, 3, *HW))
    if form == "train":
        return train.eval()
    deploy = _create(name, "deploy", num_classes=NUM_CLASSES)
    deploy.load_state_dict(reparameterize_model(train).state_dict())
    return deploy.eval()


def _copy(name: str, form: str, act_learn: float = 1.0) -> VanillaNet:
    """A copy of the shared model to change; the train form's ``act_learn`` set (0.5: the slope is a real
    nonlinearity between the paired convs, so a capture that dropped it would be caught)."""
    model = copy.deepcopy(_built(name, form))
    if form == "train":
        model.act_learn = act_learn
    return model


def _sides(name: str, hw: tuple[int, int]) -> list[tuple[int, int]]:
    """(height, width) of the stem's and every block's output maps, from the variant's geometry."""
    spec = VARIANTS[name]
    hs, ws = (feature_map_sides(n, spec.strides, spec.ada_pool) for n in hw)
    return list(zip(hs, ws))


def _features_model(name: str, form: str, **kwargs) -> torch.nn.Module:
    """``features_only=True`` model holding the weights of the case's shared model."""
    feat = _create(name, form, features_only=True, **kwargs).eval()
    full = _built(name, form).state_dict()
    inner = feat.state_dict()
    strip = next(p for p in ("model.", "graph_module.", "") if all(k.startswith(p) for k in inner))
    feat.load_state_dict({k: full[k.removeprefix(strip)] for k in inner})
    return feat


@pytest.mark.parametrize("name", list(VARIANTS))
def test_registered_with_timm_and_geometry_cfg(name):
    """Registered with the published preprocessing; ``pool_size`` is the last map at the reference input;
    ``min_input_size`` is the true minimum."""
    assert name in timm.list_models("vanillanet*")
    model = _built(name, "deploy")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and not cfg.get("fixed_input_size", False)
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert tuple(cfg["mean"]) == (0.485, 0.456, 0.406) and tuple(cfg["std"]) == (0.229, 0.224, 0.225)
    assert cfg["pool_size"] == _sides(name, (224, 224))[-1]
    smallest = cfg["min_input_size"][-1]
    assert cfg["min_input_size"] == (3, smallest, smallest)
    with torch.no_grad():
        assert model(torch.randn(1, 3, smallest, smallest)).shape == (1, NUM_CLASSES)
        with pytest.raises(RuntimeError, match="too small|greater than actual input size"):  # a pool or the stem
            model(torch.randn(1, 3, smallest - 1, smallest - 1))


@pytest.mark.parametrize("name,form", CASES)
def test_forward_backward_every_parameter_gets_a_gradient(name, form):
    model = _copy(name, form, act_learn=0.5).train()
    out = model(_input())
    assert out.shape == (2, NUM_CLASSES)
    out.square().mean().backward()
    # (a conv bias followed by train-mode BN has a gradient of exactly zero, so presence is what is checked)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing}"
    first, last = (model.stem[0], model.cls[2]) if form == "deploy" else (model.stem1[0], model.cls2[0])
    assert first.weight.grad.abs().sum() > 0 and last.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,form", CASES)
def test_features_head_and_num_features(name, form):
    model = _built(name, form)
    x = _input()
    c = model.num_features
    assert c == model.head_hidden_size == model.dims[-1] == model.feature_info[-1]["num_chs"]
    assert model.get_classifier().out_channels == NUM_CLASSES and model.num_classes == NUM_CLASSES
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, c, *_sides(name, HW)[-1])
        assert torch.equal(model.forward_head(feats), model(x))
        pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, c) and rel_err(pre, feats.mean((2, 3))) < TOL


@pytest.mark.parametrize("name,form", CASES)
def test_reset_classifier(name, form):
    """timm's rule: (k) a new k-class head; (0) pooled features (N, C); (0, "") unpooled NCHW features."""
    model = _copy(name, form)
    x = _input()
    with torch.no_grad():
        feats = model.forward_features(x)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.get_classifier().out_channels == 3
        model.reset_classifier(0)
        pooled = model(x)
        assert model.num_classes == 0 and pooled.shape == (2, model.num_features)
        assert rel_err(pooled, feats.mean((2, 3))) < TOL
        assert torch.equal(model.forward_head(feats, pre_logits=True), pooled)
        model.reset_classifier(0, "")
        assert torch.equal(model(x), feats) and torch.equal(model.forward_head(feats, pre_logits=True), feats)
        model.reset_classifier(4, "avg")
        assert model(x).shape == (2, 4)
    assert next(model.get_classifier().parameters()).dtype == torch.float32


@pytest.mark.parametrize("name,form", CASES)
def test_features_only_and_intermediates(name, form):
    """``features_only`` (default and chosen ``out_indices``) gives the block outputs of ``forward_intermediates``,
    whose strides are the ``feature_info`` reductions at every input size."""
    full = _built(name, form)
    n_blocks = len(full.stages)
    with torch.no_grad():
        for hw in (HW, OTHER_HW):
            x = _input(hw)
            final, inter = full.forward_intermediates(x)
            assert len(inter) == n_blocks and torch.equal(final, full.forward_features(x))
            for t, info in zip(inter, full.feature_info):
                assert t.shape[1] == info["num_chs"]
                assert all(abs(side - n / info["reduction"]) < 1 for side, n in zip(t.shape[-2:], hw)), (hw, info)
            assert [tuple(t.shape[-2:]) for t in inter] == _sides(name, hw)[1:]
        x = _input()
        inter = full.forward_intermediates(x, intermediates_only=True)
        early = full.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert len(early) == 1 and torch.equal(early[0], inter[1])
        for out_indices in (default_out_indices(full.strides), (0, n_blocks // 2)):
            feat = _features_model(name, form, out_indices=out_indices)
            assert feat.feature_info.out_indices == tuple(out_indices)
            assert feat.feature_info.reduction() == [full.feature_info[i]["reduction"] for i in out_indices]
            assert all(torch.equal(a, inter[i]) for a, i in zip(feat(x), out_indices, strict=True))


@pytest.mark.parametrize("name,form", CASES)
def test_fx_symbolic_trace_and_feature_extractors(name, form):
    """FX: the traced graph reproduces eager forward and backward at any input size; torchvision's
    ``create_feature_extractor`` and timm's ``FeatureGraphNet`` give the ``features_only`` tensors."""
    model = _copy(name, form, act_learn=0.5)
    graph = torch.fx.symbolic_trace(model)  # shares the model's parameters
    with torch.no_grad():
        for hw in (HW, OTHER_HW):
            x = _input(hw)
            assert rel_err(graph(x), model(x)) <= TOL
    model.train()
    x = _input()
    model(x).square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    graph.train()(x).square().mean().backward()
    assert all(rel_err(p.grad, g) <= TOL for p, g in zip(model.parameters(), eager_grads) if g.abs().max() > 0)

    getter = _features_model(name, form)
    out_indices = getter.feature_info.out_indices
    nodes = {f"stages.{i}": str(i) for i in out_indices}
    torchvision_fx = create_feature_extractor(_built(name, form), nodes)
    timm_fx = _features_model(name, form, feature_cls="fx")
    assert type(timm_fx).__name__ == "FeatureGraphNet"
    with torch.no_grad():
        expected = getter(x)
        assert all(rel_err(a, b) <= TOL for a, b in zip(torchvision_fx(x).values(), expected, strict=True))
        assert all(rel_err(a, b) <= TOL for a, b in zip(timm_fx(x), expected, strict=True))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, and still what LibTorch loads
@pytest.mark.parametrize("name,form", CAPTURE_CASES)
def test_torchscript(name, form):
    """``torch.jit.script`` compiles; the scripted module (also saved and reloaded) equals eager at any size."""
    model = _copy(name, form, act_learn=0.5)
    scripted = torch.jit.script(model)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    reloaded = torch.jit.load(io.BytesIO(buf.getvalue()))
    with torch.no_grad():
        for hw in (HW, OTHER_HW):
            x = _input(hw)
            ref = model(x)
            assert rel_err(scripted(x), ref) <= TOL and rel_err(reloaded(x), ref) <= TOL


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
@pytest.mark.parametrize("name,form", CAPTURE_CASES)
def test_fx_then_torchscript(name, form):
    """timm's route (its model tests script an FX-traced copy of every model): ``torch.jit.script`` of the
    ``torch.fx.symbolic_trace`` graph and of timm's FX feature extractor (timm's leaf modules and autowrapped
    functions, last node returned) equals eager at any size, act_learn mid-schedule, in eval and train mode.

    (A graph's signature carries the root ``forward``'s annotations: as strings, under ``from __future__ import
    annotations``, FX writes them as names such as ``_torch_Tensor_`` that TorchScript cannot resolve.)"""
    model = _copy(name, form, act_learn=0.5)
    _, eval_nodes = get_graph_node_names(model)
    graphs = [torch.fx.symbolic_trace(model), timm_fx_extractor(model, {eval_nodes[-1]: "out"})]
    scripted = [torch.jit.script(graph) for graph in graphs]
    with torch.no_grad():
        for hw in (HW, OTHER_HW):
            x = _input(hw)
            ref = model(x)
            outs = [scripted[0](x), scripted[1](x)["out"]]
            assert all(rel_err(out, ref) <= TOL for out in outs)
        x = _input()
        ref = model.train()(x)
        assert rel_err(scripted[0].train()(x), ref) <= TOL


@pytest.mark.parametrize("name,form", CAPTURE_CASES)
def test_torch_export_dynamic_batch(name, form):
    model = _copy(name, form, act_learn=0.5)
    x = _input()
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    exported = program.module()
    with torch.no_grad():
        for batch in (2, 3):
            x = _input(batch=batch, seed=batch)
            assert rel_err(exported(x), model(x)) <= TOL
