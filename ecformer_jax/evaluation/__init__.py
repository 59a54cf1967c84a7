"""Evaluation metrics of the video-inpainting papers: PSNR, SSIM (65x65 uniform window), VFID (I3D),
E_warp (flow warping error). The command is `python -m ecformer_jax.evaluate`."""
from ecformer_jax.evaluation.metrics import (  # noqa: F401
    SSIM_WINDOW, SPyNetFlow, frame_psnrs, frame_ssims, frechet_distance, masked_psnr, occlusion_masks, psnr, ssim,
    vfid, warping_errors,
)
