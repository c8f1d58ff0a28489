"""brainvq: a VQ-VAE and gated PixelCNN prior for brain MRI slices.

The data's path through the package (README, "Architecture"):
    data.py        slices on disk -> uint8 tensors in memory (OASIS names parsed)
    upload.py      a user's PNG/JPEG/NIfTI -> one 256x256 slice, sizes checked before decoding
    images.py      uint8 <-> [0, 1] floats; error maps, mosaics
    model.py       VQVAE: slice -> code grid -> reconstruction (quantizer.py holds the codebook)
    codes.py       splits -> code grids on disk, and back
    prior.py       GatedPixelCNN: the distribution of code grids (optionally with causal attention);
                   its likelihood in bits. transformer.py: CodeTransformer, the same as a sequence
    sampling.py    code grids from the prior: reference and cached samplers
    metrics.py     SSIM (scikit-image), PSNR, codebook usage
    generation.py  how real decoded samples look: Fréchet, diversity, memorisation, two-sample test
    hub.py         loading and saving models: a directory, a Hub repo, the bundled copy
    training.py    the training loop's machinery; trainers.py the three trainers
    demo.py        the app's functions; testing.py material for tests and benchmarks
"""
from .data import DataError, load_folder, load_split, parse_oasis_name, read_slice
from .hub import ModelLoadError, load_model, load_models, load_prior
from .metrics import evaluate_reconstructions, image_metrics, ssim_torch
from .model import VQVAE
from .prior import GatedPixelCNN
from .transformer import CodeTransformer
from .sampling import SAMPLERS, sample_cached, sample_codes, sample_reference

__all__ = ["CodeTransformer", "DataError", "GatedPixelCNN", "ModelLoadError", "SAMPLERS", "VQVAE", "evaluate_reconstructions",
           "image_metrics", "load_folder", "load_model", "load_models", "load_prior", "load_split", "parse_oasis_name",
           "read_slice", "sample_cached", "sample_codes", "sample_reference", "ssim_torch"]
