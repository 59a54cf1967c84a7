"""Inference protocols: long videos on the host, one window (or batch of crops) at a time on the device.

common.py    loading a checkpoint into a validated (name, module, variables); output checks and writing
protocol.py  the official long-video inpainting protocol (windows, references, blending, compositing,
             per-model size rules) and `Inpainter`, used by `python -m ecformer_jax.inpaint`
vsr.py       VSR-Transformer's crop protocol and `VSRUpscaler`, used by `python -m ecformer_jax.upscale`
"""
