"""Reconstruction quality and codebook statistics.

SSIM is scikit-image's ``structural_similarity(x, y, data_range=1.0)`` on [0, 1] floats, the
measure of the user's original study. ``ssim_torch`` reproduces it differentiably for the
training loss (tests check the two agree); reports always use scikit-image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.metrics import structural_similarity

SSIM_WINDOW = 7  # scikit-image's default


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window: int, k1: float, k2: float):
    """SSIM's luminance and contrast-structure maps of (B, C, H, W) tensors in [0, 1]."""
    x, y = x.float().contiguous(), y.float().contiguous()
    n = window * window
    # One average pool over the five maps: a box filter is the uniform window, and pooling
    # without padding keeps exactly the windows that lie inside the image.
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    mx, my, mxx, myy, mxy = F.avg_pool2d(maps, window, stride=1).split(x.shape[1], dim=1)
    cov_norm = n / (n - 1)  # sample covariance, as skimage's use_sample_covariance=True
    vx = cov_norm * (mxx - mx * mx)
    vy = cov_norm * (myy - my * my)
    vxy = cov_norm * (mxy - mx * my)
    c1, c2 = k1 ** 2, k2 ** 2
    return (2 * mx * my + c1) / (mx * mx + my * my + c1), (2 * vxy + c2) / (vx + vy + c2)


def ssim_torch(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW,
               k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM per image (B,) of (B, 1, H, W) tensors in [0, 1], differentiable.

    Same definition as scikit-image's defaults: uniform ``window`` x ``window`` means,
    sample covariance, and only windows lying fully inside the image (skimage crops
    (window-1)/2 pixels at each edge before averaging)."""
    luminance, contrast_structure = _ssim_terms(x, y, window, k1, k2)
    return (luminance * contrast_structure).mean(dim=(1, 2, 3))


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_torch(x: torch.Tensor, y: torch.Tensor, weights=MS_SSIM_WEIGHTS,
                  window: int = SSIM_WINDOW) -> torch.Tensor:
    """Multi-scale SSIM per image (B,) (Wang, Simoncelli and Bovik 2003): contrast-structure at
    every scale, luminance at the coarsest, each scale halving the image by 2x2 averaging.
    Same window as ``ssim_torch``, so with one weight it is exactly SSIM. Negative
    contrast-structure terms are clamped to 0 before the fractional powers."""
    result = torch.ones(x.shape[0], device=x.device)
    for scale, weight in enumerate(weights):
        if scale:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        luminance, contrast_structure = _ssim_terms(x, y, window, 0.01, 0.03)
        term = contrast_structure if scale + 1 < len(weights) else luminance * contrast_structure
        result = result * term.mean(dim=(1, 2, 3)).clamp_min(0) ** weight
    return result


def brain_mask(image: np.ndarray, dilation: int = 3) -> np.ndarray:
    """Pixels inside the head: non-zero input pixels, dilated by ``dilation`` pixels so the
    skull edge counts. OASIS slices are exactly 0 outside the head."""
    mask = image > 0
    return ndimage.binary_dilation(mask, iterations=dilation) if dilation else mask


def image_metrics(original: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
    """SSIM (full and in-brain), PSNR and MSE of two (H, W) float arrays in [0, 1]."""
    original = np.asarray(original, dtype=np.float64)
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    ssim, ssim_map = structural_similarity(original, reconstruction, data_range=1.0, full=True)
    mask = brain_mask(original)
    mse = float(np.mean((original - reconstruction) ** 2))
    return {
        "ssim": float(ssim),
        # skimage's SSIM map is defined everywhere; average it over the brain only.
        "ssim_brain": float(ssim_map[mask].mean()) if mask.any() else float("nan"),
        "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12))),
        "mse": mse,
    }


def code_statistics(counts: torch.Tensor) -> dict[str, float]:
    """Codebook usage (fraction of codes used at least once) and perplexity (exp entropy)."""
    counts = counts.double()
    probs = counts / counts.sum()
    nonzero = probs[probs > 0]
    return {"usage": float((counts > 0).double().mean()),
            "perplexity": float(torch.exp(-(nonzero * nonzero.log()).sum()))}


@torch.no_grad()
def evaluate_reconstructions(model, images: torch.Tensor, batch_size: int = 32,
                             progress: bool = False, encode=None) -> dict[str, float]:
    """Reconstruct uint8 slices (N, 1, H, W) and summarise: mean/std/min SSIM, in-brain SSIM,
    PSNR, MSE, codebook usage and perplexity over the set. ``encode``: slices in [0, 1] -> codes
    (default ``model.encode``; ``vqvae.code_search.search_batch`` searches them)."""
    from tqdm import tqdm

    model.eval()
    rows, counts = [], torch.zeros(model.num_codes, dtype=torch.long)
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="evaluating"):
        x = images[start:start + batch_size].float().div_(255.0)
        codes = (encode or model.encode)(x.to(next(model.parameters()).device))
        reconstruction = model.decode(codes)
        reconstruction, codes = reconstruction.cpu(), codes.cpu()
        counts += torch.bincount(codes.flatten(), minlength=model.num_codes)
        for original, rebuilt in zip(x[:, 0].numpy(), reconstruction[:, 0].float().numpy()):
            rows.append(image_metrics(original, rebuilt))
    ssim = np.array([r["ssim"] for r in rows])
    summary = {"images": len(rows), "ssim": float(ssim.mean()), "ssim_std": float(ssim.std()),
               "ssim_min": float(ssim.min())}
    for key in ("ssim_brain", "psnr", "mse"):
        summary[key] = float(np.nanmean([r[key] for r in rows]))
    summary.update(code_statistics(counts))
    return summary
