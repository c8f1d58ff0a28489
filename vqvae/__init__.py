"""brainvq: a VQ-VAE and gated PixelCNN prior for brain MRI slices.

The data's path through the package:
    data.py      slices on disk -> uint8 tensors in memory (OASIS names parsed)
    model.py     VQVAE: slice -> code grid -> reconstruction (quantizer.py holds the codebook)
    metrics.py   SSIM (scikit-image), PSNR, codebook usage
    prior.py     GatedPixelCNN: the distribution of code grids
    sampling.py  code grids from the prior: reference and cached samplers
"""
from .data import DataError, load_folder, load_split, parse_oasis_name, read_slice
from .metrics import evaluate_reconstructions, image_metrics, ssim_torch
from .model import VQVAE
from .prior import GatedPixelCNN
from .sampling import SAMPLERS, sample_cached, sample_reference

__all__ = ["DataError", "GatedPixelCNN", "SAMPLERS", "VQVAE", "evaluate_reconstructions",
           "image_metrics", "load_folder", "load_split", "parse_oasis_name", "read_slice",
           "sample_cached", "sample_reference", "ssim_torch"]
