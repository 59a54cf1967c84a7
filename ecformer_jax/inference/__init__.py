"""Inference: long videos on the host, one window (or batch of crops) at a time on the device.

protocol.py  the official long-video inpainting protocol (windows, references, blending, compositing) and
             `Inpainter`
propainter.py  ProPainter's pipeline (RAFT, flow completion, image propagation, generator windows) and
             `ProPainter`; the inpaint command runs it for --model propainter
vsr.py       VSR-Transformer's crop protocol and `VSRUpscaler`
inpaint.py   `inpaint(checkpoint, video, mask, output, ...)`: files in, files out (the inpaint command)
upscale.py   `upscale(checkpoint, video, output, ...)`: files in, files out (the upscale command)
common.py    the size parser and the output side shared by the commands

`inference.inpaint` and `inference.upscale` are the functions (the package imports them, so the names never
mean the modules); the modules are `ecformer_jax.inference.inpaint` / `.upscale`. Checkpoints are loaded with
`ecformer_jax.convert.resolve`.
"""
from ecformer_jax.inference.inpaint import inpaint
from ecformer_jax.inference.upscale import upscale

__all__ = ["inpaint", "upscale"]
