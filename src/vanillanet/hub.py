"""Hugging Face Hub folders: a model saved in timm's layout, loadable offline and publishable as it is.

``export_hf(model, folder)`` writes the deploy form of a registered variant as ``config.json`` (the architecture,
the arguments that rebuild it, the class names and a ``pretrained_cfg`` with the preprocessing), ``model.safetensors``
and a ``README.md`` model card (parameters and MACs as measured, accuracy and classes when the checkpoint records
them). The folder is written under a temporary name, reloaded through ``timm.create_model("local-dir:...")`` and
compared with the model before it is moved into place. Like every file we write, ``model.safetensors`` carries a
SHA-256 digest (of its tensors and of ``config.json``'s bytes) that every loader verifies, timm's ``local-dir:``
route included: a changed byte in either file is a one-line error, never different predictions. It then loads with

- ``timm.create_model("local-dir:FOLDER", pretrained=True)`` (after ``import vanillanet``),
- ``vanillanet.create_model(None, FOLDER)`` and ``vanillanet eval/predict --checkpoint FOLDER``.

Publishing uses huggingface_hub's own upload (``huggingface_hub.upload_folder(repo_id=..., folder_path=FOLDER)``, or
timm's ``push_to_hf_hub``); after that ``timm.create_model("hf-hub:USER/REPO", pretrained=True)`` works anywhere
``import vanillanet`` ran first. Nothing here needs the network.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .complexity import count_macs, count_params
from .data.transforms import Preprocess, resolve_preprocess
from .model.checkpoint_files import model_meta, sign_hub_folder
from .model.reparam import rel_err, reparameterize_model
from .model.variants import PUBLISHED, variant_of
from .util.errors import ConfigError, ConversionError
from .util.fileio import temporary_name

__all__ = ["HubExport", "export_hf"]


@dataclass(frozen=True)
class HubExport:
    path: Path
    architecture: str
    params: int
    macs: int
    max_rel_err: float


def _model_card(name: str, meta: dict[str, Any], pre: Preprocess, params: int, macs: int,
                class_names: list[str] | None) -> str:
    top1 = meta.get("top1")
    dataset = meta.get("dataset")
    lines = [
        "---", "tags:", "- image-classification", "- timm", "- vanillanet", "library_name: timm", "license: mit", "---",
        f"# {name} ({'deploy form' if meta.get('form') == 'deploy' else meta.get('form')})", "",
        "A VanillaNet image classifier (Chen et al., 2023, arXiv:2305.12972) in its deploy form: a plain, shallow "
        "network of convolutions, max pools and series-informed activations with no shortcuts and no "
        "normalisation layers, exported by `vanillanet export --format hf`.", "",
        "| | |", "|---|---|",
        f"| architecture | `{name}` (dims {meta['dims']}, strides {meta['strides']}, act_num {meta['act_num']}) |",
        f"| parameters | {params:,} ({params / 1e6:.2f} M) |",
        f"| MACs at {pre.img_size}x{pre.img_size} | {macs:,} ({macs / 1e9:.3f} G) |",
        f"| input | {meta['in_chans']} x {pre.img_size} x {pre.img_size}, mean {list(pre.mean)}, std {list(pre.std)}, "
        f"{pre.interpolation} resize, centre crop {pre.crop_pct:g} |",
        f"| classes | {meta['num_classes']} |",
    ]
    if top1 is not None:
        lines.append(f"| top-1 | {100 * float(top1):.2f} %{f' on {dataset}' if dataset else ''} (as recorded by "
                     "the checkpoint) |")
    elif name in PUBLISHED and meta["num_classes"] == 1000 and meta.get("architecture") == name:
        lines.append(f"| published ImageNet-1k top-1 of this architecture | {PUBLISHED[name].top1} % (paper; not "
                     "measured for these weights) |")
    lines += ["", "## Use", "", "```python", "import timm", "import vanillanet  # registers the VanillaNet models "
              "with timm", "", 'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
              "# or, once uploaded: timm.create_model(\"hf-hub:USER/REPO\", pretrained=True)", "```", "",
              "Command line: `vanillanet predict image.jpg --checkpoint PATH/TO/THIS/FOLDER`."]
    if class_names:
        shown = ", ".join(class_names[:20]) + (f", ... ({len(class_names)} in all)" if len(class_names) > 20 else "")
        lines += ["", "## Classes", "", shown]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def export_hf(model: nn.Module, folder: str | Path, *, tol: float = 1e-5) -> HubExport:
    """Write ``model``'s deploy form (a train form is converted first) as a Hugging Face folder; see the module
    docstring. Refuses an existing non-empty folder, a custom (unregistered) architecture and a reload that
    differs from the model by more than ``tol`` (max relative error)."""
    import timm
    from timm.models import get_pretrained_cfg, save_for_hf

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ConfigError(f"{folder} exists and is not an empty folder; pick a new --output folder (nothing is "
                          "overwritten)")
    deploy = reparameterize_model(model).float().cpu()
    name = variant_of(deploy)
    if name == "custom":
        raise ConversionError("only registered variants can be loaded by name from a Hub folder; this model has "
                              f"dims {list(deploy.dims)} and strides {list(deploy.strides)}: save it with save_weights")
    meta = {**getattr(model, "checkpoint_meta", {}), **model_meta(deploy)}
    pre = resolve_preprocess(model_cfg=getattr(model, "pretrained_cfg", None), meta=meta)
    if not hasattr(deploy, "pretrained_cfg"):
        deploy.pretrained_cfg = get_pretrained_cfg(name).to_dict()
    class_names = [str(c) for c in meta.get("class_names") or []] or None
    model_args = dict(deploy=True, dims=list(deploy.dims), width_mult=1.0, act_num=deploy.act_num,
                      in_chans=deploy.in_chans, num_classes=deploy.num_classes)  # dims are already scaled
    if not deploy.series_act:  # the ablation's plain-ReLU network (the one option a deploy form keeps)
        model_args["series_act"] = False
    data_config = dict(input_size=(deploy.in_chans, pre.img_size, pre.img_size), crop_pct=pre.crop_pct,
                       mean=tuple(pre.mean), std=tuple(pre.std), interpolation=pre.interpolation)
    ours = {k: v for k, v in meta.items() if k in ("top1", "dataset", "trained_by", "format", "format_version",
                                                     "act_num", "dims", "strides", "ada_pool", "form")}
    tmp = temporary_name(folder)
    try:
        save_for_hf(deploy, str(tmp), model_config={"label_names": class_names, "vanillanet": ours},
                    model_args=model_args, safe_serialization=True, data_config=data_config)
        sign_hub_folder(tmp)  # the SHA-256 digest of the weights and config.json, as every file we write carries
        size = (deploy.in_chans, pre.img_size, pre.img_size)
        params, macs = count_params(deploy), count_macs(deploy, size)
        (tmp / "README.md").write_text(_model_card(name, meta, pre, params, macs, class_names))
        reloaded = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
        x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0))
        err = rel_err(reloaded(x), deploy(x))
        if not err <= tol:
            raise ConversionError(f"the Hub folder reloads with relative error {err:.3g} (> {tol:g}); not written")
        if folder.exists():
            folder.rmdir()  # empty (checked above)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return HubExport(folder, name, params, macs, err)
