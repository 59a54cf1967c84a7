"""Minimal stand-ins for the third-party imports of the OFFICIAL PyTorch repositories, so that
`tools/benchmark.py --against-official PATH` can build their generators and discriminators from a plain
checkout with nothing but PyTorch installed. Nothing of the official code is copied here; each stand-in
is written from the documented behaviour of the library it replaces, and is installed only when the real
package cannot be imported:

- `torchvision` (STTN, FuseFormer, DSTT do `import torchvision.models as models` and never use it):
  empty `torchvision` / `torchvision.models` modules. The PyPI torchvision wheel is built against CUDA
  PyTorch and does not load next to the CPU-only torch build, hence the stub. For ProPainter the stub also
  has `torchvision.ops.deform_conv2d` (torchvision's signature and offset layout, which is mmcv's: per offset
  group, per tap (dy, dx); computed by `modulated_deform_conv2d` below) and `torchvision.transforms.Compose`
  (apply the transforms in order; ProPainter's core/utils.to_tensors builds one).
- `mmcv` (E2FGVI / E2FGVI-HQ):
  * `mmcv.ops.modulated_deform_conv2d` and `ModulatedDeformConv2d` (the second-order deformable
    alignment of the feature propagation): a pure-PyTorch modulated deformable convolution with mmcv's
    layout: offset (N, 2*DG*K, Ho, Wo), per deform group then per tap (dy, dx); mask (N, DG*K, Ho, Wo);
    bilinear sampling with zeros outside the image (F.grid_sample, align_corners=True, in pixel units),
    then one matmul with the (grouped) weight. Same result as mmcv's im2col kernel; differentiable.
  * `mmcv.cnn.ConvModule` (SPyNet's conv + activation, no norm): `.conv` (nn.Conv2d, bias) then
    `.activate`, so the state_dict keys (`...basic_module.{j}.conv.weight`) are the official ones;
    mmcv's kaiming init (fan_out, relu).
  * `mmcv.cnn.constant_init`: fill weight (and bias) with constants.
  * `mmcv.runner.load_checkpoint`: does nothing. SPyNet() asks it for the pretrained flow weights by URL;
    there is no network here and the benchmark copies the official model's weights (whatever they are)
    into the JAX model anyway, so both sides compute with the same numbers.

    from official_shims import install
    stand_ins = install("/path/to/E2FGVI", mmcv=True)   # puts the checkout first on sys.path
    from model.e2fgvi import InpaintGenerator
"""
from __future__ import annotations

import importlib
import sys
import types


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def modulated_deform_conv2d(x, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                            deform_groups=1):
    """mmcv.ops.modulated_deform_conv2d in plain PyTorch (NCHW)."""
    import torch
    import torch.nn.functional as F

    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2:]
    dg = deform_groups
    dev, dt = x.device, x.dtype
    ky, kx = torch.meshgrid(torch.arange(kh, device=dev, dtype=dt) * dh,
                            torch.arange(kw, device=dev, dtype=dt) * dw, indexing="ij")
    base_y = ky.reshape(k, 1, 1) + (torch.arange(ho, device=dev, dtype=dt) * sh - ph).view(1, ho, 1)
    base_x = kx.reshape(k, 1, 1) + (torch.arange(wo, device=dev, dtype=dt) * sw - pw).view(1, 1, wo)
    off = offset.view(n, dg, k, 2, ho, wo)
    py = base_y + off[:, :, :, 0]  # (n, dg, k, ho, wo), pixel units
    px = base_x + off[:, :, :, 1]
    grid = torch.stack((px * (2.0 / max(w - 1, 1)) - 1.0, py * (2.0 / max(h - 1, 1)) - 1.0), dim=-1)
    cols = F.grid_sample(x.reshape(n * dg, c // dg, h, w), grid.view(n * dg, k * ho, wo, 2), mode="bilinear",
                         padding_mode="zeros", align_corners=True)  # (n*dg, c/dg, k*ho, wo)
    cols = cols.view(n, dg, c // dg, k, ho, wo) * mask.view(n, dg, 1, k, ho, wo)
    cols = cols.reshape(n, groups, c // groups, k, ho * wo)
    out = torch.einsum("ngckp,gock->ngop", cols, weight.reshape(groups, cout // groups, cin_g, k))
    out = out.reshape(n, cout, ho, wo)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
    """torchvision.ops.deform_conv2d: offset groups = offset channels / (2 * kh * kw); mask None = all ones."""
    import torch

    kh, kw = weight.shape[-2:]
    deform_groups = offset.shape[1] // (2 * kh * kw)
    groups = input.shape[1] // weight.shape[1]
    if mask is None:
        mask = torch.ones((offset.shape[0], deform_groups * kh * kw) + tuple(offset.shape[-2:]), dtype=input.dtype)
    return modulated_deform_conv2d(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                                   deform_groups)


def _torchvision_modules():
    class Compose:
        """torchvision.transforms.Compose: call each transform on the result of the previous one."""

        def __init__(self, transforms):
            self.transforms = list(transforms)

        def __call__(self, x):
            for t in self.transforms:
                x = t(x)
            return x

    tv = types.ModuleType("torchvision")
    tv.__doc__ = "stand-in from tools/official_shims.py"
    tvm, ops, transforms = (types.ModuleType(f"torchvision.{m}") for m in ("models", "ops", "transforms"))
    ops.deform_conv2d = deform_conv2d
    transforms.Compose = Compose
    tv.models, tv.ops, tv.transforms = tvm, ops, transforms
    return {"torchvision": tv, "torchvision.models": tvm, "torchvision.ops": ops, "torchvision.transforms": transforms}


def _mmcv_modules():
    import math

    import torch
    import torch.nn as nn

    class ModulatedDeformConv2d(nn.Module):
        """mmcv.ops.ModulatedDeformConv2d: parameters `weight` (out, in/groups, kh, kw) and `bias`."""

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     deform_groups=1, bias=True):
            super().__init__()
            self.in_channels, self.out_channels = in_channels, out_channels
            self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
            self.padding, self.dilation = _pair(padding), _pair(dilation)
            self.groups, self.deform_groups = groups, deform_groups
            self.transposed, self.output_padding = False, _pair(0)
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
            self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
            self.init_weights()

        def init_weights(self):
            stdv = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
            self.weight.data.uniform_(-stdv, stdv)
            if self.bias is not None:
                self.bias.data.zero_()

        def forward(self, x, offset, mask):
            return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                                           self.dilation, self.groups, self.deform_groups)

    class ConvModule(nn.Module):
        """mmcv.cnn.ConvModule without normalisation: conv (with bias) then the activation."""

        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias="auto", conv_cfg=None, norm_cfg=None, act_cfg=None, inplace=True, **unused):
            super().__init__()
            if norm_cfg is not None or conv_cfg is not None:
                raise NotImplementedError("the ConvModule stand-in has no norm_cfg / conv_cfg")
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                  bias=True if bias == "auto" else bias)
            self.activate = None
            if act_cfg is not None:
                kind = act_cfg.get("type")
                if kind == "ReLU":
                    self.activate = nn.ReLU(inplace=inplace)
                elif kind == "LeakyReLU":
                    self.activate = nn.LeakyReLU(act_cfg.get("negative_slope", 0.01), inplace=inplace)
                else:
                    raise NotImplementedError(f"the ConvModule stand-in has no activation {kind!r}")
            nn.init.kaiming_normal_(self.conv.weight, a=0, mode="fan_out", nonlinearity="relu")
            if self.conv.bias is not None:
                nn.init.zeros_(self.conv.bias)

        def forward(self, x):
            x = self.conv(x)
            return self.activate(x) if self.activate is not None else x

    def constant_init(module, val, bias=0):
        if getattr(module, "weight", None) is not None:
            nn.init.constant_(module.weight, val)
        if getattr(module, "bias", None) is not None:
            nn.init.constant_(module.bias, bias)

    def load_checkpoint(model, filename, map_location=None, strict=False, logger=None, **unused):
        return {}  # no download: the benchmark replaces nothing, it copies these weights to JAX

    mmcv = types.ModuleType("mmcv")
    mmcv.__doc__ = "stand-in from tools/official_shims.py"
    ops, cnn, runner = (types.ModuleType(f"mmcv.{m}") for m in ("ops", "cnn", "runner"))
    ops.ModulatedDeformConv2d, ops.modulated_deform_conv2d = ModulatedDeformConv2d, modulated_deform_conv2d
    cnn.ConvModule, cnn.constant_init = ConvModule, constant_init
    runner.load_checkpoint = load_checkpoint
    mmcv.ops, mmcv.cnn, mmcv.runner = ops, cnn, runner
    return {"mmcv": mmcv, "mmcv.ops": ops, "mmcv.cnn": cnn, "mmcv.runner": runner}


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # ImportError, or a wheel that does not load next to this torch build
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        return False


def install(repo_path: str, mmcv: bool = False) -> list[str]:
    """Put the checkout first on sys.path and install the stand-ins its imports need (only where the real
    package is missing). Returns a description of each stand-in installed."""
    used = []
    if repo_path not in sys.path:
        sys.path.insert(0, repo_path)
    if not _importable("torchvision.models"):
        sys.modules.update(_torchvision_modules())
        used.append("torchvision: stub (models unused by the generators; ops.deform_conv2d in pure PyTorch; "
                    "transforms.Compose)")
    if mmcv and not (_importable("mmcv.ops") and _importable("mmcv.cnn") and _importable("mmcv.runner")):
        sys.modules.update(_mmcv_modules())
        used.append("mmcv.ops.ModulatedDeformConv2d / modulated_deform_conv2d: pure PyTorch (grid_sample + matmul)")
        used.append("mmcv.cnn.ConvModule, constant_init: plain nn.Conv2d + activation, constant fill")
        used.append("mmcv.runner.load_checkpoint: no-op (no pretrained SPyNet download)")
    return used
