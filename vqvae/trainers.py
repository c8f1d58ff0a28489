"""The three trainers, each a configuration (the run's settings, from which the command line
and the saved run config come) and a function that trains from it:

- ``train_vqvae``: the VQ-VAE on slices, or only its decoder on a trained encoder's codes;
- ``train_prior``: the gated PixelCNN on a trained VQ-VAE's code grids;
- ``train_position_net``: the SliceCNN that predicts slice position (the generation metrics'
  feature network).

The realistic decoder's trainer (a detail head on the frozen faithful decoder, against a
discriminator) is ``vqvae/realistic.py``.

Each writes RUN_DIR/metrics.jsonl, RUN_DIR/checkpoint.pt and the final model under
RUN_DIR/model (``vqvae/training.py``) and returns its final evaluation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .adversarial import Adversary, PatchDiscriminator, grid_fingerprint_loss, spectral_loss
from .codes import code_counts, codes_path, load_codes, save_codes, slice_pairs
from .data import load_split
from .generation import SliceCNN, position_accuracy
from .hub import CONFIG, FREQUENCIES, load_model, load_prior
from .metrics import evaluate_reconstructions, ssim_torch
from .model import VQVAE, low_pass
from .prior import GatedPixelCNN, code_nll, nll_bits, unigram_bits
from .transformer import CodeTransformer
from .training import MODEL, RunConfig, TrainingRun, distributed_setup, load_into, option, parallel


@dataclass(kw_only=True)
class DataConfig:
    data: str = option(help="OASIS root, or a folder with train/ and validate/ splits")
    limit: int | None = option(None, "read only the first N images of each split")


# -- the VQ-VAE ------------------------------------------------------------------------------

@dataclass(kw_only=True)
class VQVAETraining(RunConfig, DataConfig):
    downsample: int = option(8, "downsampling factor f: codes are (256/f)^2", choices=(4, 8, 16))
    codes: int = option(512, "codebook size K")
    code_dim: int = option(64, "dimension of each codebook vector")
    base_channels: int = option(16, "channels of the outermost encoder/decoder stage")
    hidden_channels: int = option(64, "channels at the code resolution")
    res_blocks: int = option(2, "residual blocks at the code resolution")
    refine_blocks: int = option(0, "residual blocks after each inner upsampling stage of the decoder")
    texture_channels: int = option(0, "width of the decoder's full-resolution texture head (0 = none; see vqvae/model.py)")
    texture_blocks: int = option(2, "residual blocks of the texture head")
    texture_noise: bool = option(True, "per-pixel noise into the texture head (StyleGAN), for texture the codes do not fix")
    init: str | None = option(None, "start from this trained VQ-VAE (its architecture; refinement blocks it "
                                    "lacks start as the identity)")
    decoder_only: bool = option(False, "train only the decoder; needs --init (encoder and codebook stay frozen)")
    encoder_only: bool = option(False, "train only the encoder; needs --init (decoder and codebook stay frozen): it "
                                       "learns to choose the codes this decoder draws best from, as code search "
                                       "does per image; the codes change, so priors must follow them")
    pixel_loss: str = option("mse", "pixel term of the loss", choices=("mse", "l1"))
    ssim_weight: float = option(1.0, "loss = pixel loss + w * (1 - SSIM) + commitment (Zhao et al. 2017)")
    bf16: bool = option(False, "the same as --precision bf16 (the quantiser stays fp32)")
    channels_last: bool = option(True, "channels-last memory format (faster convolutions on CPUs)")
    eval_images: int = option(256, "validate images used by the periodic evaluation (0 = all)")
    adversarial: bool = option(False, "train the decoder against a patch discriminator (vqvae/adversarial.py); "
                                      "needs --decoder-only")
    disc_channels: int = option(32, "discriminator width (doubling over its layers)")
    disc_layers: int = option(3, "stride-2 layers of the discriminator (3: ~70-pixel patches)")
    disc_norm: str = option("group", "normalisation of the discriminator's layers (see vqvae/adversarial.py)",
                            choices=("group", "batch"))
    disc_lr: float = option(2e-4, "discriminator learning rate (Adam, betas 0.5, 0.9)")
    disc_start: int = option(200, "steps of reconstruction loss alone before the discriminator joins")
    disc_weight: float = option(0.1, "weight of the adversarial loss (times the adaptive weight)")
    adaptive_max: float = option(1.0, "clamp of VQGAN's adaptive weight (0 = a fixed weight of 1)")
    feature_matching: float = option(1.0, "weight of discriminator feature matching (pix2pixHD)")
    recon_lowpass: float = option(0.0, "the reconstruction loss compares both images blurred by a Gaussian of this "
                                       "sigma (pixels), leaving finer detail to the discriminator alone (frequency "
                                       "separation, see vqvae/adversarial.py; 0 = off); needs --adversarial")
    spectral_weight: float = option(0.0, "weight of the band-power spectral loss between reconstructions and real "
                                          "slices (after Durall et al. 2020; see vqvae/adversarial.py; 0 = off)")
    grid_weight: float = option(0.0, "weight of the code-grid fingerprint loss: texture locked to the f x f code cells "
                                     "(see vqvae/adversarial.py; 0 = off)")
    disc_crop: int = option(128, "both players see the same random square crop this wide each step (0 = whole slice; "
                                 "see vqvae/adversarial.py)")
    free_background: bool = option(False, "where the slice is exactly 0 (background), outputs below 0 cost nothing: "
                                          "decode clamps them to 0, so the loss judges what is shown")
    skip_bad: bool = option(False, "leave out unreadable or wrongly sized images (with a warning and a count)")

    def __post_init__(self):
        super().__post_init__()
        if self.decoder_only and not self.init:
            raise ValueError("--decoder-only needs --init: the codes come from a trained encoder")
        if self.encoder_only and not self.init:
            raise ValueError("--encoder-only needs --init: it chooses codes for a trained decoder")
        if self.encoder_only and self.decoder_only:
            raise ValueError("--encoder-only and --decoder-only exclude each other: one part trains")
        if self.bf16:
            self.precision = "bf16"
        if self.adversarial and not self.decoder_only:
            raise ValueError("--adversarial trains a decoder on frozen codes: give --decoder-only and --init")
        if self.recon_lowpass and not self.adversarial:
            raise ValueError("--recon-lowpass leaves fine detail to the discriminator: it needs --adversarial")


def build_vqvae(config: VQVAETraining) -> VQVAE:
    """A new VQ-VAE, or (``init``) the trained one's architecture with at least
    ``refine_blocks`` refinement blocks, its weights copied in (new blocks are the identity)."""
    if not config.init:
        return VQVAE(downsample=config.downsample, num_codes=config.codes, code_dim=config.code_dim,
                     base_channels=config.base_channels, hidden_channels=config.hidden_channels,
                     res_blocks=config.res_blocks, refine_blocks=config.refine_blocks,
                     texture_channels=config.texture_channels, texture_blocks=config.texture_blocks,
                     texture_noise=config.texture_noise)
    trained = load_model(VQVAE, config.init)
    settings = json.loads((Path(config.init) / CONFIG).read_text())
    settings["refine_blocks"] = max(config.refine_blocks, settings.get("refine_blocks", 0))
    if config.texture_channels:  # a decoder-only change of shape: a new head, which starts at zero
        settings.update(texture_channels=config.texture_channels, texture_blocks=config.texture_blocks,
                        texture_noise=config.texture_noise)
    model = VQVAE(**settings)
    load_into(model, trained, new=(".refine.", ".texture."))
    return model


def vqvae_loss(model: VQVAE, forward, x: torch.Tensor, config: VQVAETraining, context):
    """-> (loss, codes, reconstruction): pixel loss + w * (1 - SSIM) + commitment, plus the spectral and
    code-grid fingerprint terms where their weights are set. ``forward`` is what trains
    (the model, or its decoder alone, possibly wrapped for DDP); it runs inside ``context``
    (autocast or not), the loss in fp32."""
    with context:
        if config.decoder_only:  # the frozen encoder's codes, exactly as a prior sees them
            codes = model.encode(x)
            reconstruction, commit_loss = forward(model.quantizer.lookup(codes)), 0.0
        else:
            reconstruction, commit_loss, codes = forward(x)
    reconstruction = reconstruction.float()
    if config.free_background:  # real background is exactly 0; decode shows max(output, 0) there
        reconstruction = torch.where(x == 0, reconstruction.clamp(min=0.0), reconstruction)
    judged, target = reconstruction, x
    if config.recon_lowpass:  # frequency separation: finer detail is the discriminator's to judge
        judged, target = low_pass(reconstruction, config.recon_lowpass), low_pass(x, config.recon_lowpass)
    pixel = (F.l1_loss if config.pixel_loss == "l1" else F.mse_loss)(judged, target)
    loss = pixel + commit_loss
    if config.ssim_weight:
        loss = loss + config.ssim_weight * (1 - ssim_torch(judged, target).mean())
    shown = reconstruction.clamp(0.0, 1.0)  # the texture terms judge what decode shows
    if config.spectral_weight:
        loss = loss + config.spectral_weight * spectral_loss(shown, x)
    if config.grid_weight:
        loss = loss + config.grid_weight * grid_fingerprint_loss(shown, x, model.downsample)
    return loss, codes, reconstruction


def evaluation_subset(images: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spread images (all for 0): a fixed subset keeps periodic evaluation cheap
    and comparable over time."""
    n = len(images) if count <= 0 else min(count, len(images))
    return images[torch.linspace(0, len(images) - 1, n).long()]


def last_decoder_layer(model: VQVAE) -> torch.Tensor:
    """The weight whose gradients VQGAN's adaptive weight compares: what draws the output."""
    if model.decoder.texture is not None:
        return model.decoder.texture.out[1].weight
    return model.decoder.net[-1].weight


def train_vqvae(config: VQVAETraining) -> dict:
    config.start()
    train, validate = (load_split(config.data, split, limit=config.limit, progress=config.progress,
                                  skip_bad=config.skip_bad) for split in ("train", "validate"))
    model = build_vqvae(config)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if config.decoder_only or config.encoder_only:  # one part trains: the other and the codebook stay
        # (encoder only: the straight-through estimator carries the frozen decoder's verdict back to it)
        (model.encoder if config.decoder_only else model.decoder).requires_grad_(False)
        model.quantizer.frozen = True
    trained = model.decoder if config.decoder_only else model
    optimizer = torch.optim.Adam([p for p in trained.parameters() if p.requires_grad], lr=config.lr)
    companions, adversary = {}, None
    if config.adversarial:
        if distributed_setup()[1] > 1:  # each rank would train its own discriminator
            raise ValueError("--adversarial runs in one process (one discriminator); not under torchrun")
        discriminator = PatchDiscriminator(config.disc_channels, config.disc_layers, norm=config.disc_norm)
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.disc_lr, betas=(0.5, 0.9))
        companions = {"discriminator": discriminator, "disc_optimizer": disc_optimizer}
        adversary = Adversary(discriminator, disc_optimizer, last_decoder_layer(model), config.disc_weight,
                              config.adaptive_max, config.feature_matching, config.disc_crop)
    # a resumed run's weights (and discriminator) replace --init's
    run = TrainingRun(config, model, optimizer, len(train), companions)
    # after TrainingRun: a resumed model is loaded before DDP copies it
    forward = parallel(trained, config.compile)

    def batch(index):
        return train.batch(index).to(run.device, memory_format=memory_format, non_blocking=True)

    run.choose_precision(lambda probe, x, context: vqvae_loss(
        probe, probe.decoder if config.decoder_only else probe, x, config, context)[0],
        batch(torch.arange(min(config.batch_size, len(train)))))

    eval_images = evaluation_subset(validate.images, config.eval_images)

    def evaluate():
        metrics = evaluate_reconstructions(model, eval_images)
        return {k: metrics[k] for k in ("ssim", "ssim_brain", "psnr", "usage", "perplexity")}

    model.train()
    while not run.finished():
        x = batch(run.next_batch())
        run.apply_learning_rate()
        loss, codes, reconstruction = vqvae_loss(model, forward, x, config, run.autocast())
        logged = {"loss": loss.item()}
        against = adversary is not None and run.step >= config.disc_start
        if against:
            loss, extra = adversary.generator_loss(loss, reconstruction, x, run.autocast())
            logged.update(extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if against:
            logged["d_loss"] = adversary.discriminator_step(x, reconstruction.detach(), run.autocast())
        logged["batch_usage"] = torch.unique(codes).numel() / model.num_codes
        run.step_done(logged, evaluate)
    return run.finish(evaluate, save_dir=run.out / MODEL)


# -- the prior -------------------------------------------------------------------------------

@dataclass(kw_only=True)
class PriorTraining(RunConfig, DataConfig):
    vqvae: str = option(help="trained VQ-VAE model directory (its codes are what the prior learns)")
    batch_size: int = option(32, "code grids per step (per process under torchrun)")
    channels: int = option(64, "channels of the gated layers")
    layers: int = option(10, "gated layers")
    kernel: int = option(5, "kernel size of the gated convolutions")
    coordinates: int = option(32, "channels of the learned location map the gates see (0 = none; see vqvae/prior.py)")
    init: str | None = option(None, "start from this trained prior's weights (same channels, layers and kernel); "
                                    "a location map it lacks starts at zero")
    drop_position: float = option(0.1, "train this fraction without the slice position, for unconditional sampling")
    previous_slice: int = option(0, "condition on the code grid of the slice below, embedded in this many channels "
                                    "(0 = off): the volume prior, trained on pairs of neighbouring slices")
    attention_every: int = option(0, "a causal self-attention block after every this many gated layers (0 = none; "
                                     "PixelSNAIL, see vqvae/prior.py): global context over the whole grid")
    attention_heads: int = option(2, "heads of each attention block (and of the transformer's layers)")
    architecture: str = option("pixelcnn", "pixelcnn: the gated PixelCNN (vqvae/prior.py); transformer: a causal "
                                           "transformer over the raster sequence (vqvae/transformer.py), of --layers "
                                           "blocks of --channels", choices=("pixelcnn", "transformer"))


def prepare_codes(config: PriorTraining, vqvae: VQVAE) -> dict[str, dict]:
    """The splits' code grids: encoded once into RUN_DIR/codes_<split>.npz (reused on resume)."""
    rank, world = distributed_setup()
    for split in ("train", "validate"):
        path = codes_path(config.out, split)
        if rank == 0 and not (config.resume and path.exists()):
            slices = load_split(config.data, split, limit=config.limit, progress=config.progress)
            save_codes(vqvae, slices, path, progress=config.progress)
    if world > 1:
        torch.distributed.barrier()  # the other ranks read the codes rank 0 wrote
    return {split: load_codes(codes_path(config.out, split)) for split in ("train", "validate")}


def train_prior(config: PriorTraining) -> dict:
    """Validation reports the negative log-likelihood in bits per code beside two baselines on
    the same split: uniform (log2 K) and the entropy of the split's own code frequencies."""
    config.start()
    vqvae = load_model(VQVAE, config.vqvae)
    splits = prepare_codes(config, vqvae)
    train, validate = splits["train"], splits["validate"]
    grid = train["codes"].shape[-1]
    if config.architecture == "transformer":
        if config.previous_slice:
            raise ValueError("--previous-slice needs --architecture pixelcnn")
        prior = CodeTransformer(num_codes=vqvae.num_codes, channels=config.channels, layers=config.layers,
                                heads=config.attention_heads, grid_size=grid)
    else:
        prior = GatedPixelCNN(num_codes=vqvae.num_codes, channels=config.channels, layers=config.layers,
                              kernel=config.kernel, grid_size=grid, coordinates=config.coordinates,
                              previous_slice=config.previous_slice, attention_every=config.attention_every,
                              attention_heads=config.attention_heads)
    start = load_prior(config.init) if config.init else None
    if start is not None:
        load_into(prior, start, new=("coordinate", "previous", "attention"))
    # Each training item: a code grid, and (volume prior) the grid of the slice below it.
    items, below = torch.arange(len(train["codes"])), None
    if config.previous_slice:
        items, below = slice_pairs(train["subjects"], train["positions"])
        validate_items, validate_below = slice_pairs(validate["subjects"], validate["positions"])
    optimizer = torch.optim.Adam(prior.parameters(), lr=config.lr)
    run = TrainingRun(config, prior, optimizer, len(items))
    forward = parallel(prior, config.compile)
    def batch(index):
        """-> (codes, positions, the slices below or None) of training items ``index``."""
        codes, positions = train["codes"][items[index]], train["positions"][items[index]].clone()
        return (codes.to(run.device), positions.to(run.device),
                None if below is None else train["codes"][below[index]].to(run.device))

    def prior_loss(module, codes, positions, previous, context):
        with context:
            logits = module(codes, positions) if previous is None else module(codes, positions, previous)
        return code_nll(logits.float(), codes)

    run.choose_precision(lambda probe, b, context: prior_loss(probe, *b, context),
                         batch(torch.arange(min(config.batch_size, len(items)))))
    baselines = {"uniform_bits": math.log2(vqvae.num_codes),
                 "unigram_bits": unigram_bits(validate["codes"], vqvae.num_codes)}
    if config.previous_slice:
        pair = (validate["codes"][validate_items], validate["positions"][validate_items],
                validate["codes"][validate_below])
        if start is not None and not start.previous_slice:
            # started from an ordinary prior: what it scores is what independent slices score
            # (a volume prior continued from another scores nothing meaningful without the slice below)
            baselines["nll_bits_independent"] = nll_bits(start, *pair[:2])

    def evaluate():
        if config.previous_slice:
            return {"nll_bits": nll_bits(prior, pair[0], pair[1], previous=pair[2]), **baselines}
        return {"nll_bits": nll_bits(prior, validate["codes"], validate["positions"]),
                "nll_bits_no_position": nll_bits(prior, validate["codes"], None), **baselines}

    prior.train()
    while not run.finished():
        codes, positions, previous = batch(run.next_batch())
        positions[(torch.rand(len(positions)) < config.drop_position).to(positions.device)] = -1
        run.apply_learning_rate()
        loss = prior_loss(forward, codes, positions, previous, run.autocast())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step_done({"bits": loss.item() / math.log(2)}, evaluate)
    final = run.finish(evaluate, save_dir=run.out / MODEL)
    if run.is_main:  # the app's histogram compares a slice's codes with how often training used them
        counts = code_counts(train["codes"], vqvae.num_codes)
        (run.out / MODEL / FREQUENCIES).write_text(json.dumps(counts.tolist()))
    return final


# -- the position network --------------------------------------------------------------------

@dataclass(kw_only=True)
class PositionNetTraining(RunConfig, DataConfig):
    batch_size: int = option(32, "slices per step (per process under torchrun)")


def train_position_net(config: PositionNetTraining) -> dict:
    """Validation reports exact accuracy over the positions and accuracy within one position
    (neighbouring slices look alike)."""
    config.start()
    train, validate = (load_split(config.data, split, limit=config.limit, progress=config.progress)
                       for split in ("train", "validate"))
    if (train.positions < 0).any() or (validate.positions < 0).any():
        raise ValueError("slice positions come from OASIS file names (case_<subject>_slice_<k>); "
                         "some files here do not have them")
    model = SliceCNN(num_classes=int(train.positions.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    run = TrainingRun(config, model, optimizer, len(train))
    forward = parallel(model, config.compile)

    def position_loss(module, index, context):
        with context:
            logits = module(train.images[index].to(run.device))
        return F.cross_entropy(logits.float(), train.positions[index].to(run.device))

    run.choose_precision(position_loss, torch.arange(min(config.batch_size, len(train))))

    def evaluate():
        return position_accuracy(model, validate.images, validate.positions)

    model.train()
    while not run.finished():
        index = run.next_batch()
        run.apply_learning_rate()
        loss = position_loss(forward, index, run.autocast())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.step_done({"loss": loss.item()}, evaluate)
    return run.finish(evaluate, save_dir=run.out / MODEL)
