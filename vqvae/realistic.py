"""The realistic decoder's trainer: a detail head (``model.DetailHead``) drawn on the frozen
faithful decoder's image, trained against a whole-slice discriminator.

The faithful decoder is SSIM-optimal at 0.14 bits per pixel, so it blurs (the
perception-distortion trade-off, Blau and Michaeli 2018), and a small CNN tells its
reconstructions from real slices every time at 256x256. The head adds what is missing: fine
detail with real slices' statistics, from the image and per-pixel noise. Its two losses:

- adversarial: the non-saturating GAN loss (Goodfellow et al. 2014) against a discriminator of
  the shape of the project's two-sample classifier (``generation.SliceCNN``: stride-2
  convolutions with batch norm, a 4x4 spatial summary, one logit) on a random ``crop`` of the
  slice, real and generated crops of the same place judged in one batch. A patch discriminator
  (``vqvae/adversarial.py``) sat at chance here while a fresh classifier found every decoder.
- reconstruction: L1 between the output and the real slice, both blurred by a Gaussian of
  ``recon_sigma`` pixels (frequency separation, Fritsche et al. 2019): anatomy stays where the
  codes put it, detail finer than the blur answers to the discriminator alone.

Settings added after the first shipped head, each off by default:

- ``detail_highpass`` (the model's ``DetailHead.highpass``): the head's correction loses its own
  Gaussian blur, so only detail is drawn and coarse intensity stays the faithful decoder's. The
  first head, trained on the L1 of 2-pixel blurs alone, darkened the brain and flattened its
  coarse contrast, which the adversarial loss paid for and the blurred L1 barely noticed.
- ``prior`` with ``sample_share``: the frozen decoder's images of prior samples (drawn once at
  start-up) stand in for a share of each batch's reconstructions before the discriminator; they
  have no real counterpart, so they answer to it alone. The app decodes samples by default, and
  the first head was told apart on samples far more often than on reconstructions.
- ``histogram_weight`` (``histogram_loss``): each output crop's pixel intensities matched to its
  real crop's in any arrangement. The first head saturated 45x real slices' share of pixels and
  lit the background outside the brain. In its one run (README campaign: realistic-hist) the
  background went dark again, but the two-sample test found the head more often, not less.
- ``r1_gamma`` (``r1_penalty``): the R1 gradient penalty on real crops (Mescheder et al. 2018,
  "Which Training Methods for GANs do actually Converge?"; as StyleGAN). In every run from the
  shipped head, a fresh discriminator sat at chance for minutes, then found the head (its loss
  0.1-1.2, the head's adversarial loss 1.5-5) and the head drifted without losing it: the
  two-sample test then found the head's reconstructions more often (0.673-0.947 against 0.660).
  A discriminator whose logit cannot turn sharply near real slices gives the head gradients it
  can follow instead of a cliff.
  In its one run (README campaign: realistic-r1, gamma 1, 30 minutes) the discriminator stayed
  at chance throughout, and the head drifted all the same (reconstructions 0.837).
- ``detail_histogram_weight`` (``detail_band``): the same loss on each crop's detail band. The
  shipped head's detail was too heavy-tailed: on validate, the kurtosis of its 3x3 Laplacian
  inside the brain was 20.5 against real slices' 12.1, and |Laplacian| > 80 grey levels was 12x
  as common. Clamping each pixel's step from its neighbours' mean to 30 grey levels, a crude
  cut of those spikes, moved the two-sample classifier on the split that found the head (0.971)
  to 0.802, the largest drop of any probe; matching its per-intensity spread did not (0.990).
  In its one run (README campaign: realistic-dhist, weight 50, 30 minutes from the shipped head)
  the loss grew under the adversary instead (0.0007 to ~0.002), the kurtosis went to 22.4, and
  reconstructions were found more often (0.947 against 0.660): a tail of 0.03 % of pixels weighs
  too little in a mean over all of them.
- ``detail_mid_channels`` (the model's ``DetailHead`` ``mid_channels``): a half-resolution branch
  in the head, so it sees 27 pixels instead of 13. In its one run (README campaign:
  realistic-mid, 64 channels, 36 minutes from the shipped head) the discriminator pulled ahead
  after 12 minutes as before, and reconstructions were found 0.887, samples 0.971.
- ``discriminators`` with ``disc_reset_steps`` (``restart_discriminators``): several
  discriminators, each started afresh in turn, so the head meets young classifiers, as the
  two-sample test's is. In its run (README campaign: realistic-young, two discriminators on
  128-pixel crops restarted every 600 steps, 30 minutes from the shipped head) they sat at
  chance for 15 minutes and the head drifted all the same: its average was found 0.978 over six
  subject splits at 11 minutes, and 0.868 at 30, once the discriminators had begun to find it
  (shipped head 0.730). Drift, then, is not a discriminator grown old. On whole slices
  (realistic-whole: ``crop`` 0, 4 slices a step, restarts every 2 400 steps) the pair found the
  shipped head within two minutes and kept finding it; 25 minutes of the head answering them
  left its reconstructions found 0.957.
- ``texture_weight`` (``texture_loss``): each 16-pixel patch's Gram matrix of an oriented filter
  bank's responses matched to the real crop's. In its one run (README campaign:
  realistic-texture, weight 30, 30 minutes from the shipped head) the loss did not fall, the
  discriminator pulled ahead after 10-15 minutes as before, and reconstructions were found 0.918
  over six subject splits (shipped head 0.730).

- ``energy_weight`` (``energy_score``) with ``adversarial_weight`` 0: no discriminator at all.
  Two draws of the head (independent noise) are scored against the real crop patch by patch by
  the energy score, a strictly proper scoring rule: the head is asked for the distribution of
  each patch given the image, which is what the band test below says is missing, and the
  objective has no second player to drift with. In its one run (README campaign:
  realistic-energy, weight 1, 64-pixel crops, 30 minutes from the shipped head) the score on
  every 8th validate slice fell from the shipped head's 0.157 to 0.103 (the faithful decoder's
  0.145), the rms difference of two draws grew from 0.015 to 0.039, and the two-sample test found
  every reconstruction on six subject splits (1.000, held-out loss 1e-4; shipped head 0.730):
  a score that is proper patch by patch still lets the head draw detail that a classifier sees
  is not a brain's.
  With the discriminator beside it (realistic-energy-adv: both weights 1, 64-pixel crops, 30
  minutes) it did not hold the head: the discriminator sat at chance for 15 minutes and then
  pulled ahead as in every adversarial run; six splits gave accuracy 0.784 but a held-out AUC of
  0.999 (shipped head 0.866 and 0.989 on the same machine): the classifier still ranks every
  reconstruction apart.

Where the head is given away (``train.evaluate_generation --bands 1,2``, README "Which band gives a
decoder away"): the faithful image below a 2-pixel blur plus the real slice's finer detail passes
the two-sample test (0.500), so the codes get every coarser scale right; the real detail moved
2 pixels, another subject's, or noise with real detail's spectrum and spread are all found
(0.94-1.00). What is missing is the slice's own detail finer than a 2-pixel blur, in place: a
loss that asks the head to predict it (not only a discriminator) is the next thing to try.

The saved head is an exponential moving average of the trained one's weights (``ema``; Yazici et
al. 2019, "The Unusual Effectiveness of Averaging in GAN Training"): the two players circle each
other, and in a probe on this data the two-sample held-out loss of the live head fell from 0.021
at 13 minutes to 0.008 at 25, so whichever step a run ends at is a draw; the average is not.

The encoder, codebook and the decoder below the head are frozen, so the codes and every prior
stay valid; the frozen decoder's images of the train split are computed once at start-up
(float16, 1.3 GB for OASIS train), so a step costs only the head and the discriminator.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .adversarial import random_crop
from .data import load_split
from .generation import SliceCNN
from .hub import CONFIG, load_model, load_prior
from .metrics import evaluate_reconstructions
from .model import VQVAE, low_pass
from .sampling import sample_codes
from .training import MODEL, RunConfig, TrainingRun, load_into, option
from .trainers import DataConfig, evaluation_subset


@dataclass(kw_only=True)
class RealisticTraining(RunConfig, DataConfig):
    init: str = option(help="the faithful VQ-VAE whose decoder the detail head finishes (frozen)")
    detail_channels: int = option(32, "width of the detail head at full resolution")
    detail_blocks: int = option(4, "residual blocks of the detail head")
    detail_noise: int = option(4, "channels of per-pixel Gaussian noise the head reads")
    detail_highpass: float = option(0.0, "the head's correction loses its Gaussian blur of this sigma, so the "
                                         "coarse image stays the faithful decoder's (0 = off)")
    detail_mid_channels: int = option(0, "width of the head's half-resolution branch, which sees gyri the "
                                         "full-resolution blocks cannot (0 = none; it starts at zero, so --init "
                                         "from a trained head starts where it was)")
    detail_mid_blocks: int = option(3, "residual blocks of the half-resolution branch")
    prior: str = option("", "a prior on --init's codes: its samples join the discriminator's fakes (see sample_share)")
    samples: int = option(1024, "prior samples drawn at start-up (T = 1, at train's slice positions)")
    sample_share: float = option(0.0, "share of each batch's generated crops drawn on prior samples, judged by "
                                      "the discriminator only (0 = reconstructions alone)")
    crop: int = option(128, "square crop of each slice that a step trains on (0 = whole slice)")
    recon_sigma: float = option(1.0, "the reconstruction loss compares images blurred by a Gaussian of this sigma")
    recon_weight: float = option(10.0, "weight of the low-passed L1 against the adversarial loss's 1")
    histogram_weight: float = option(0.0, "weight of the histogram loss: each output crop's sorted pixels against "
                                          "its real crop's (0 = off)")
    detail_histogram_weight: float = option(0.0, "weight of the histogram loss on the detail band (each crop minus "
                                                 "its 1-pixel Gaussian blur): the spread and tails of fine detail "
                                                 "(0 = off)")
    band_weight: float = option(0.0, "weight of the band loss: L1 between the output's and the real crop's detail "
                                     "finer than the --recon-sigma blur, so the head predicts the slice's own "
                                     "detail in place instead of drawing it from noise alone (0 = off)")
    energy_weight: float = option(0.0, "weight of the energy score: two draws of the head (independent noise) "
                                       "against the real crop, patch by patch; a proper scoring rule, so it asks "
                                       "for the distribution of each patch given the image, not its mean (0 = off)")
    energy_patch: int = option(8, "side of the square patches the energy score compares")
    adversarial_weight: float = option(1.0, "weight of the adversarial loss (0 = no discriminator is trained: the "
                                            "head answers to the other losses alone)")
    texture_weight: float = option(0.0, "weight of the texture loss: local second-order statistics of fine detail "
                                        "(an oriented filter bank's Gram matrices on 16-pixel patches) matched "
                                        "to the real crop's (0 = off)")
    r1_gamma: float = option(0.0, "weight gamma of the R1 penalty, gamma / 2 x the squared gradient of the "
                                  "discriminator's logit in real crops (0 = off)")
    disc_lr: float = option(2e-4, "discriminator learning rate (Adam, betas 0.5, 0.9)")
    disc_width: int = option(32, "width of the discriminator (SliceCNN's)")
    discriminators: int = option(1, "discriminators the head meets, its adversarial loss their mean; with "
                                    "--disc-reset-steps their restarts are staggered evenly")
    disc_reset_steps: int = option(0, "start each discriminator afresh (new weights, new Adam state) every this "
                                      "many steps, so the head always meets young classifiers, as the two-sample "
                                      "test's is (0 = never)")
    lr: float = option(2e-4, "peak learning rate of the detail head (Adam, betas 0.5, 0.9)")
    ema: float = option(0.999, "decay of the moving average of the head's weights that is evaluated and saved "
                                "(0 = the trained weights themselves)")
    eval_images: int = option(128, "validate images of the periodic evaluation (0 = all)")
    eval_minutes: float = option(10.0, "evaluate and checkpoint every this much training time")
    skip_bad: bool = option(False, "leave out unreadable or wrongly sized images (with a warning and a count)")

    def __post_init__(self):
        super().__post_init__()
        if self.discriminators < 1:
            raise ValueError("--discriminators must be at least 1")
        if self.energy_patch < 1:
            raise ValueError("--energy-patch must be at least 1")
        if self.adversarial_weight < 0:
            raise ValueError("--adversarial-weight must be 0 (off) or positive")
        if not self.adversarial_weight and self.prior and self.sample_share > 0:
            raise ValueError("--sample-share shows prior samples to the discriminator: with --adversarial-weight 0 "
                             "there is none")
        if self.disc_reset_steps < 0:
            raise ValueError("--disc-reset-steps must be 0 (never) or positive")
        if self.disc_reset_steps and self.disc_reset_steps < self.discriminators:
            raise ValueError("--disc-reset-steps must be at least --discriminators: their restarts are staggered")


def build_realistic(config: RealisticTraining) -> VQVAE:
    """The faithful model's architecture plus a detail head (identity start), its weights copied in."""
    settings = json.loads((Path(config.init) / CONFIG).read_text())
    settings.update(detail_channels=config.detail_channels, detail_blocks=config.detail_blocks,
                    detail_noise=config.detail_noise, detail_highpass=config.detail_highpass,
                    detail_mid_channels=config.detail_mid_channels, detail_mid_blocks=config.detail_mid_blocks)
    model = VQVAE(**settings)
    load_into(model, load_model(VQVAE, config.init), new=(".detail.",))
    return model


@torch.no_grad()
def base_images(model: VQVAE, images: torch.Tensor | None = None, codes: torch.Tensor | None = None,
                batch_size: int = 32) -> torch.Tensor:
    """uint8 slices (or code grids) -> the frozen decoder's images of their codes, clamped, as float16."""
    n = len(images if codes is None else codes)
    f = model.downsample
    shape = images.shape if codes is None else (n, 1, codes.shape[1] * f, codes.shape[2] * f)
    out = torch.empty(shape, dtype=torch.float16)
    for i in range(0, n, batch_size):
        grid = model.encode(images[i:i + batch_size].float().div(255.0)) if codes is None else codes[i:i + batch_size]
        out[i:i + batch_size] = model.decoder.base(model.quantizer.lookup(grid)).clamp(0.0, 1.0)
    return out


def sample_bases(model: VQVAE, config: RealisticTraining, positions: torch.Tensor) -> torch.Tensor:
    """The frozen decoder's images of ``config.samples`` prior samples at T = 1, their slice
    positions drawn from ``positions`` (seeded by the run's seed, so a resumed run draws the same).
    Why: the app shows samples by default, and a head trained on reconstructions only was told
    apart on samples (0.895) far more often than on reconstructions (0.660); samples have no real
    counterpart, so they answer to the discriminator alone."""
    with torch.random.fork_rng():  # building the prior draws initial weights: the run's stream stays as it was
        prior = load_prior(config.prior)
    if prior.num_codes != model.num_codes:
        raise ValueError(f"--prior models {prior.num_codes} codes but --init has {model.num_codes}")
    known = positions[positions >= 0]  # slices whose file name gave no position are left out
    generator = torch.Generator().manual_seed(config.seed)
    chosen = known[torch.randint(len(known), (config.samples,), generator=generator)] if len(known) else None
    return base_images(model, codes=sample_codes(prior, config.samples, chosen, seed=config.seed, batch_size=64))


def reconstruction_loss(output: torch.Tensor, real: torch.Tensor, sigma: float) -> torch.Tensor:
    """L1 of the two images blurred by a Gaussian of ``sigma`` pixels: anatomy, not detail."""
    return F.l1_loss(low_pass(output, sigma), low_pass(real, sigma))


def band_loss(output: torch.Tensor, real: torch.Tensor, sigma: float) -> torch.Tensor:
    """L1 of the two images' detail finer than a Gaussian blur of ``sigma`` pixels. Why: below a
    2-pixel blur the faithful image passes the two-sample test, and no detail but the slice's own,
    in place, passes on it (real detail moved 2 pixels, or another subject's, is found); this asks
    the head for that detail's conditional median, edges sharpened where they are."""
    return F.l1_loss(detail_band(output, sigma), detail_band(real, sigma))


def histogram_loss(output: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over crops of the 1-D Wasserstein-1 distance between the output's and the real crop's
    pixel intensities (their sorted values, L1): the histogram loss of Risser et al. 2017
    ("Stable and Controllable Neural Texture Synthesis and Style Transfer Using Histogram
    Losses"), here on pixels. It asks for the real crop's intensities in any arrangement, so it
    leaves texture to the discriminator. Why: the first shipped head drew 45x real slices' share
    of fully saturated pixels and lit 0.6 % of the background outside the brain, which real
    slices never do; the blurred L1 cannot see either and the discriminator did not remove them.
    The output is compared unclamped, so a pixel above 1 is pulled down rather than lost to the
    clamp's zero gradient."""
    return F.l1_loss(output.flatten(1).sort(dim=1).values, real.flatten(1).sort(dim=1).values)


def energy_score(first: torch.Tensor, second: torch.Tensor, real: torch.Tensor, patch: int = 8) -> torch.Tensor:
    """Mean over ``patch``-pixel patches of the energy score of two draws (``first``, ``second``:
    the head's outputs for the same image with independent noise) against the real patch:
    (|first - real| + |second - real|) / 2 - |first - second| / 2, each |.| the Euclidean norm over
    the patch. The energy score (Gneiting and Raftery 2007, "Strictly Proper Scoring Rules,
    Prediction, and Estimation") is strictly proper: its expectation is least when the draws come
    from the real patches' own distribution given the image, so it asks for detail of the right
    amount and structure without a discriminator (as engression, Shen and Meinshausen 2023). Why:
    ten runs of the head against discriminators drifted into detail a fresh classifier finds,
    while an L1 on the detail band (``band_loss``) asks for its median, which is the faithful
    decoder's blur again; the second term, the draws' spread, is what keeps them from it."""
    def norms(difference):
        columns = F.unfold(difference, patch, stride=patch)  # (B, patch * patch, patches)
        return (columns.square().sum(1) + 1e-12).sqrt()  # the epsilon: a finite gradient at 0
    return (0.5 * (norms(first - real) + norms(second - real)) - 0.5 * norms(first - second)).mean()


def r1_penalty(logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over real crops of the squared norm of d(sum of their logits) / d(crop); ``real``
    must require grad and the logits come from it. The graph is kept, so the penalty trains."""
    gradient, = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return gradient.float().square().flatten(1).sum(1).mean()


def detail_band(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """What is finer than a Gaussian blur of ``sigma`` pixels (1: the scale at which a classifier
    tells the heads)."""
    return images - low_pass(images, sigma)


def _filter_bank() -> torch.Tensor:
    """Five 3x3 filters of fine detail: the two gradients, the two diagonals, the Laplacian."""
    bank = torch.zeros(5, 1, 3, 3)
    bank[0, 0, 1] = torch.tensor([-0.5, 0.0, 0.5])
    bank[1, 0, :, 1] = torch.tensor([-0.5, 0.0, 0.5])
    bank[2, 0, 0, 0], bank[2, 0, 2, 2] = -0.5, 0.5
    bank[3, 0, 0, 2], bank[3, 0, 2, 0] = -0.5, 0.5
    bank[4, 0] = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]) / 4
    return bank


def texture_statistics(images: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """(B, 1, H, W) -> each ``patch``-pixel patch's Gram matrix of the filter bank's responses at
    full and half resolution (its upper triangle, 30 numbers), as signed square roots so that a
    patch's statistics weigh like its detail's amplitude, not its square."""
    bank = _filter_bank().to(images.device, images.dtype)
    rows, cols = torch.triu_indices(len(bank), len(bank))
    grams = []
    for image, size in ((images, patch), (F.avg_pool2d(images, 2), patch // 2)):
        responses = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="reflect"), bank)
        grams.append(F.avg_pool2d(responses[:, rows] * responses[:, cols], size))
    gram = torch.cat(grams, dim=1)
    return gram.sign() * (gram.abs() + 1e-8).sqrt()


def texture_loss(output: torch.Tensor, real: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """L1 between the output's and the real crop's local texture statistics (``texture_statistics``):
    how much fine detail each patch holds, in which orientations and how they co-vary, at the real
    slice's own place, in any phase. The Gram-matrix texture loss of Gatys et al. 2015, on patches
    as in EnhanceNet (Sajjadi et al. 2017), here on a fixed filter bank since no pretrained network
    can be downloaded. Why: the two-sample classifier that finds the shipped head keys on its fine
    detail, and inside the brain that detail is misplaced, not missing: its spread is 1.3x real
    slices' in bright white matter (16.1 against 12.7 grey levels; 12.1 against 7.3 above 180)
    and a little short in grey matter, with 14-29 % less power than real slices at the highest
    frequencies except along one axis. Neither the blurred L1 nor the adversary moved that."""
    return F.l1_loss(texture_statistics(output, patch), texture_statistics(real, patch))


def realistic_step(head, optimizer, real, base, config: RealisticTraining, autocast,
                   discriminator=None, disc_optimizer=None, sampled=None) -> dict[str, float]:
    """One step of the head on real crops and the frozen decoder's crops of them, each forward
    pass inside ``autocast()``: the discriminator's update, then the head's against the updated
    discriminator. Without a discriminator: the plain step, the reconstruction loss alone (what
    ``benchmarks.realistic_step`` sets the adversary's cost against). ``sampled``: crops of
    prior samples' images, drawn on too; ``base`` then covers the first ``len(real) - len(sampled)``
    real crops, and the samples' outputs meet the discriminator only. ``discriminator`` and
    ``disc_optimizer`` may be lists (``discriminators``): each is updated, and the head's
    adversarial loss is the mean of theirs. With ``energy_weight``, a second draw of the paired
    crops is scored with the first (``energy_score``)."""
    n, losses = len(real), {}
    # with the energy score, a second draw of each paired crop rides in the same batch
    shown = [base] + ([sampled] if sampled is not None else []) + ([base] if config.energy_weight else [])
    with autocast():
        drawn = head(torch.cat(shown)).float()
    output, second = drawn[:n], drawn[n:]
    adversarial = torch.zeros(())
    if discriminator is not None:
        judges = discriminator if isinstance(discriminator, (list, tuple)) else [discriminator]
        optimizers = disc_optimizer if isinstance(disc_optimizer, (list, tuple)) else [disc_optimizer]
        disc_losses, penalties = [], []
        for judge, judge_optimizer in zip(judges, optimizers, strict=True):
            # real and generated crops in one batch: one set of batch statistics
            shown_real = real.detach().requires_grad_(True) if config.r1_gamma else real
            with autocast():
                logits = judge.judge(torch.cat([shown_real, output.detach().clamp(0.0, 1.0)])).float()
            disc_loss = F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()
            disc_losses.append(disc_loss.item())
            if config.r1_gamma:
                penalty = r1_penalty(logits[:n], shown_real)
                disc_loss = disc_loss + 0.5 * config.r1_gamma * penalty
                penalties.append(penalty.item())
            judge_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            judge_optimizer.step()
            judge.requires_grad_(False)
            with autocast():
                logits = judge.judge(torch.cat([real, output.clamp(0.0, 1.0)])).float()
            judge.requires_grad_(True)
            adversarial = adversarial + F.softplus(-logits[n:]).mean() / len(judges)  # non-saturating
        losses.update(adv=adversarial.item(), d_loss=sum(disc_losses) / len(judges))
        if penalties:
            losses.update(r1=sum(penalties) / len(penalties))
    paired = len(base)
    mine, theirs = output[:paired], real[:paired]  # the crops that have a real counterpart
    recon = reconstruction_loss(mine, theirs, config.recon_sigma)
    loss = config.adversarial_weight * adversarial + config.recon_weight * recon
    statistics = (("band", config.band_weight, lambda a, b: band_loss(a, b, config.recon_sigma)),
                  ("hist", config.histogram_weight, histogram_loss),
                  ("detail_hist", config.detail_histogram_weight,
                   lambda a, b: histogram_loss(detail_band(a), detail_band(b))),
                  ("texture", config.texture_weight, texture_loss),
                  ("energy", config.energy_weight, lambda a, b: energy_score(a, second, b, config.energy_patch)))
    for name, weight, measure in statistics:  # each off at weight 0
        if weight:
            value = measure(mine, theirs)
            loss = loss + weight * value
            losses[name] = value.item()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "recon": recon.item(), **losses}


def new_discriminator(config: RealisticTraining) -> SliceCNN:
    """One discriminator of the run's width, in the two-sample classifier's shape: one logit."""
    return SliceCNN(num_classes=1, width=config.disc_width, input_pool=1)


def restart_discriminators(judges, optimizers, config: RealisticTraining, step: int) -> list[int]:
    """Start afresh each discriminator whose turn it is at ``step`` (every ``disc_reset_steps``,
    the i-th of K offset by i/K of that, so their ages stay evenly spread): new weights, seeded by
    the run's seed, the step and its index (a resumed run restarts them alike, and the run's own
    random stream is untouched), batch statistics and Adam state cleared. Returns the indices
    restarted. Why: the two-sample test judges the head with a fresh classifier trained for 300
    steps, while in the runs from the shipped head one discriminator trained alongside it for
    thousands: it sat at chance, then pulled ahead, and the head drifted into texture a fresh
    classifier also finds. Young discriminators are the test's kind; with several, restarted in
    turn, one of them has always trained for a while (several discriminators:
    Durugkar et al. 2017, "Generative Multi-Adversarial Networks")."""
    period = config.disc_reset_steps
    if not period or step == 0:
        return []
    restarted = []
    for i, (judge, judge_optimizer) in enumerate(zip(judges, optimizers)):
        if (step + i * period // len(judges)) % period:
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 1_000_003 + step * 101 + i)
            fresh = new_discriminator(config)
        judge.load_state_dict(fresh.state_dict())
        judge_optimizer.state.clear()
        restarted.append(i)
    return restarted


def train_realistic(config: RealisticTraining) -> dict:
    config.start()
    train, validate = (load_split(config.data, split, limit=config.limit, progress=config.progress,
                                  skip_bad=config.skip_bad) for split in ("train", "validate"))
    model = build_realistic(config)
    model.requires_grad_(False)  # its detail head holds the moving average: what is evaluated and saved
    head = copy.deepcopy(model.decoder.detail).requires_grad_(True)  # the weights that train
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr, betas=(0.5, 0.9))
    # at adversarial weight 0 no discriminator is built, trained or checkpointed
    judges = [new_discriminator(config) for _ in range(config.discriminators if config.adversarial_weight else 0)]
    judge_optimizers = [torch.optim.Adam(judge.parameters(), lr=config.disc_lr, betas=(0.5, 0.9)) for judge in judges]
    companions = {"head": head}
    for i, (judge, judge_optimizer) in enumerate(zip(judges, judge_optimizers)):
        suffix = str(i) if i else ""  # the first keeps the names a single discriminator's checkpoint has
        companions.update({f"discriminator{suffix}": judge, f"disc_optimizer{suffix}": judge_optimizer})
    run = TrainingRun(config, model, optimizer, len(train), companions)
    model.eval()
    if run.is_main:
        print(f"drawing the frozen decoder's images of {len(train)} train slices")
    bases = base_images(model, train.images)
    sampled = None
    if config.prior and config.sample_share > 0:
        if run.is_main:
            print(f"drawing {config.samples} prior samples and their frozen decoder's images")
        sampled = sample_bases(model, config, train.positions)
    share = round(config.sample_share * config.batch_size) if sampled is not None else 0

    def crops(index, window=None):
        """The same random crop (or ``window``) of the real slices and of their frozen decoder's images
        (and, with prior samples, of ``share`` random samples' images in place of the last ones)."""
        rows, cols = window or random_crop(config.crop, *train.images.shape[-2:])
        real = train.images[index][..., rows, cols].float().div(255.0).to(run.device)  # crop, then convert
        paired = len(index) - (share if window is None else 0)
        base = bases[index[:paired]][..., rows, cols].float().to(run.device)
        if paired == len(index):
            return real, base, None
        picked = torch.randint(len(sampled), (len(index) - paired,))
        return real, base, sampled[picked][..., rows, cols].float().to(run.device)

    def timed_loss(probe, batch, context):
        real, base, _ = batch
        with context:
            output = probe.decoder.detail.requires_grad_(True).train()(base)  # a copy: the average stays frozen
        return reconstruction_loss(output.float(), real, config.recon_sigma)

    corner = (slice(0, config.crop or None),) * 2  # not a random crop: the run's random stream stays untouched
    run.choose_precision(timed_loss, crops(torch.arange(min(config.batch_size, len(train))), corner))
    eval_images = evaluation_subset(validate.images, config.eval_images)

    def evaluate():
        metrics = evaluate_reconstructions(model, eval_images)
        return {k: metrics[k] for k in ("ssim", "ssim_brain", "psnr")}

    head.train()
    for judge in judges:
        judge.train()
    while not run.finished():
        real, base, sampled_crops = crops(run.next_batch())
        run.apply_learning_rate()
        restart_discriminators(judges, judge_optimizers, config, run.step)
        adversaries = (judges, judge_optimizers) if judges else (None, None)
        losses = realistic_step(head, optimizer, real, base, config, run.autocast, *adversaries, sampled_crops)
        with torch.no_grad():
            for average, live in zip(model.decoder.detail.parameters(), head.parameters()):
                average.lerp_(live, 1.0 - config.ema)
        run.step_done(losses, evaluate)
    return run.finish(evaluate, save_dir=run.out / MODEL)
