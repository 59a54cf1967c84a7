"""Evaluation of the video-inpainting papers: PSNR, SSIM (65x65 uniform window), VFID (I3D), E_warp (flow
warping error) in metrics.py / i3d.py, and `evaluation.run(results, gt, output, ...)` (run.py), the work of
`python -m ecformer_jax.evaluate`. `evaluation.run` is the function (the package imports it, so the name
never means the module); the module's other names: `from ecformer_jax.evaluation.run import format_table`."""
from ecformer_jax.evaluation.metrics import (  # noqa: F401
    SSIM_WINDOW,
    SPyNetFlow,
    frame_psnrs,
    frame_ssims,
    frechet_distance,
    masked_psnr,
    occlusion_masks,
    psnr,
    ssim,
    vfid,
    warping_errors,
)
from ecformer_jax.evaluation.run import run  # noqa: F401
