import pytest
import torch

from tests.test_prior import tiny_prior
from vqvae.sampling import pick_codes, sample_cached, sample_reference, teacher_forced_picks

CASES = {
    "unconditional": {},
    "per-sample positions": {"positions": torch.tensor([0, 1, 3, -1])},
    "temperature and top-k": {"temperature": 0.7, "top_k": 5},
    "greedy": {"temperature": 0.0},
    "completion": {"keep_rows": 3, "initial": torch.randint(0, 16, (4, 8, 8),
                                                         generator=torch.Generator().manual_seed(5))},
    "guidance": {"positions": torch.tensor([0, 1, 3, 2]), "guidance": 2.5},
    "guided completion": {"positions": torch.tensor([0, 1, 3, 2]), "guidance": 1.5, "keep_rows": 3,
                          "initial": torch.randint(0, 16, (4, 8, 8), generator=torch.Generator().manual_seed(5))},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("coordinates, attention_every", [(0, 0), (3, 0), (3, 1)])
def test_cached_sampler_equals_reference_bit_for_bit(case, dtype, coordinates, attention_every):
    prior = tiny_prior(coordinates=coordinates, attention_every=attention_every).to(dtype)
    kwargs = CASES[case]
    reference = sample_reference(prior, 4, generator=torch.Generator().manual_seed(7), **kwargs)
    cached = sample_cached(prior, 4, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(reference, cached)
    if "keep_rows" in kwargs:
        assert torch.equal(cached[:, :3], kwargs["initial"][:, :3])
        assert not torch.equal(cached[:, 3:], kwargs["initial"][:, 3:])


def test_seeds_differ_and_progress_reports_rows():
    prior = tiny_prior()
    rows = []
    a = sample_cached(prior, 2, generator=torch.Generator().manual_seed(1),
                      progress=lambda done, codes: rows.append(done))
    b = sample_cached(prior, 2, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    assert rows == list(range(1, 9))


def test_pick_codes_top_k_and_temperature():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    assert set(pick_codes(logits, g, top_k=2).tolist()) <= {2, 3}
    assert pick_codes(logits, g, temperature=0).unique().tolist() == [2]
    hot = pick_codes(logits, g, temperature=100.0)
    assert len(hot.unique()) == 4  # near-uniform at high temperature


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.7, "top_k": 5}, {"keep_rows": 3}, {"guidance": 2.0}])
def test_teacher_forced_picks_reproduce_the_reference(kwargs):
    """The one-pass check gives exactly the reference sampler's codes, and catches a changed code."""
    prior = tiny_prior(coordinates=3)
    keep = kwargs.get("keep_rows", 0)
    initial = torch.randint(0, 16, (3, 8, 8), generator=torch.Generator().manual_seed(1)) if keep else None
    positions = torch.tensor([0, 2, 3])
    reference = sample_reference(prior, 3, positions, generator=torch.Generator().manual_seed(11), initial=initial,
                                 **kwargs)
    picks, margin = teacher_forced_picks(prior, reference, positions, seed=11, temperature=kwargs.get("temperature", 1.0),
                                         top_k=kwargs.get("top_k"), keep_rows=keep, guidance=kwargs.get("guidance", 1.0))
    assert torch.equal(picks, reference) and (margin[:, keep:] > 0).all()
    tampered = reference.clone()
    tampered[0, 5, 5] = (tampered[0, 5, 5] + 1) % 16
    picks, _ = teacher_forced_picks(prior, tampered, positions, seed=11, temperature=kwargs.get("temperature", 1.0),
                                    top_k=kwargs.get("top_k"), keep_rows=keep, guidance=kwargs.get("guidance", 1.0))
    assert picks[0, 5, 5] != tampered[0, 5, 5]


def test_guidance_one_is_the_plain_sampler_and_guidance_changes_the_draw():
    prior = tiny_prior(coordinates=3, attention_every=1)
    positions = torch.tensor([0, 1, 3, 2])
    plain = sample_cached(prior, 4, positions, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, sample_cached(prior, 4, positions, generator=torch.Generator().manual_seed(3),
                                            guidance=1.0))
    assert not torch.equal(plain, sample_cached(prior, 4, positions, generator=torch.Generator().manual_seed(3),
                                                guidance=4.0))
    # without a position there is nothing to guide towards: the unconditional draw
    free = sample_cached(prior, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(free, sample_cached(prior, 4, generator=torch.Generator().manual_seed(3), guidance=4.0))
    with pytest.raises(ValueError, match="guidance"):
        sample_cached(prior, 4, positions, guidance=-1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cached_attention_step_keeps_the_priors_precision(dtype):
    """The cached attention step computes in the prior's dtype: a float64 scale once promoted a
    float32 prior's scores to float64 and made every step copy the whole value cache (about a
    third of the time of 16 guided samples on the shipped prior)."""
    import numpy as np

    from vqvae.sampling import _HorizontalStep
    prior = tiny_prior(coordinates=3, attention_every=1).to(dtype)
    step = _HorizontalStep(prior)
    step.start_attention(2, 4, {})
    layer = next(iter(step.attention))
    x = np.random.default_rng(0).standard_normal((2, prior.embedding.embedding_dim)).astype(step.embedding.dtype)
    for index in range(3):
        assert step.attend(layer, x, index).dtype == x.dtype
    assert step.keys[layer].dtype == x.dtype


def test_cached_sampler_on_the_shipped_prior_picks_what_the_reference_would():
    """On the shipped weights (float32, where cached and full-pass logits differ by ~1e-5):
    64 samples over 4 seeds, each code checked against the reference's pick by teacher forcing."""
    from tests.conftest import BUNDLED
    from vqvae.hub import load_model
    from vqvae.prior import GatedPixelCNN
    prior = load_model(GatedPixelCNN, BUNDLED / "prior")
    for seed in range(4):
        positions = torch.arange(16) * 2
        codes = sample_cached(prior, 16, positions=positions, generator=torch.Generator().manual_seed(seed))
        picks, margin = teacher_forced_picks(prior, codes, positions=positions, seed=seed)
        assert torch.equal(picks, codes), f"seed {seed}: {(picks != codes).sum()} codes differ"


def test_guided_cached_sampler_on_the_shipped_prior_picks_what_the_reference_would():
    """The same check at the app's guidance (1.5), where the doubled batch's two halves are
    mixed before each pick: 16 samples over 2 seeds."""
    from app import SAMPLE_GUIDANCE
    from tests.conftest import BUNDLED
    from vqvae.hub import load_prior
    prior = load_prior(BUNDLED / "prior")
    for seed in range(2):
        positions = torch.arange(8) * 4
        codes = sample_cached(prior, 8, positions=positions, generator=torch.Generator().manual_seed(seed),
                              guidance=SAMPLE_GUIDANCE)
        picks, _ = teacher_forced_picks(prior, codes, positions=positions, seed=seed, guidance=SAMPLE_GUIDANCE)
        assert torch.equal(picks, codes), f"seed {seed}: {(picks != codes).sum()} codes differ"


@pytest.mark.parametrize("coordinates", [0, 3])
def test_cached_sampler_equals_reference_given_the_slice_below(coordinates):
    prior = tiny_prior(coordinates=coordinates, previous_slice=4)
    below = torch.randint(0, 16, (3, 8, 8), generator=torch.Generator().manual_seed(2))
    reference = sample_reference(prior, 3, generator=torch.Generator().manual_seed(4), previous=below,
                                 positions=torch.tensor([1, 2, -1]))
    cached = sample_cached(prior, 3, generator=torch.Generator().manual_seed(4), previous=below,
                           positions=torch.tensor([1, 2, -1]))
    assert torch.equal(reference, cached)
    picks, _ = teacher_forced_picks(prior, cached, positions=torch.tensor([1, 2, -1]), seed=4, previous=below)
    assert torch.equal(picks, cached)
    assert not torch.equal(cached, sample_cached(prior, 3, generator=torch.Generator().manual_seed(4),
                                                 previous=torch.roll(below, 1, 0), positions=torch.tensor([1, 2, -1])))
