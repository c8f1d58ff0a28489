import torch

from vqvae.quantizer import VectorQuantizer


def clusters(n=4096, centres=8, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centres, dim, generator=g) * 5
    labels = torch.randint(0, centres, (n,), generator=g)
    return means[labels] + 0.05 * torch.randn(n, dim, generator=g), means


def as_grid(flat):  # (N, D) -> (1, D, N, 1): the quantiser's image layout
    return flat.t()[None, :, :, None]


def quantisation_error(vq, data):
    return (vq.codebook[vq.nearest(data)] - data).pow(2).sum(1).mean()


def test_data_init_places_codes_on_data_and_ema_tracks_clusters():
    torch.manual_seed(0)
    data, means = clusters()
    data = data + 100  # far from the random initial codebook
    vq = VectorQuantizer(num_codes=16, code_dim=4, decay=0.9).train()
    vq(as_grid(data))
    assert torch.cdist(vq.codebook, data).min(1).values.max() < 2  # codes start inside the data
    for _ in range(30):
        vq(as_grid(data))
    assert quantisation_error(vq, data) < 0.05 * data.var(0).sum()


def test_dead_codes_restart_onto_poorly_served_data():
    torch.manual_seed(0)
    data, _ = clusters(centres=16)
    data = data + 100  # the zero codebook's code 0 wins everything, the rest stay unused
    vq = VectorQuantizer(num_codes=16, code_dim=4, decay=0.8, data_init=False).train()
    vq.codebook.zero_()  # everything maps to code 0 at first: a collapsed codebook
    vq.ema_sum.zero_()
    for _ in range(50):
        _, _, codes = vq(as_grid(data))
    assert torch.unique(codes).numel() >= 14


def test_without_restarts_a_collapsed_codebook_stays_collapsed():
    torch.manual_seed(0)
    data, _ = clusters(centres=16)
    data = data + 100
    vq = VectorQuantizer(num_codes=16, code_dim=4, decay=0.8, data_init=False, dead_threshold=0).train()
    vq.codebook.zero_()
    vq.ema_sum.zero_()
    for _ in range(20):
        _, _, codes = vq(as_grid(data))
    assert torch.unique(codes).numel() == 1


def test_straight_through_gradient_and_fp32_under_bf16_autocast():
    vq = VectorQuantizer(num_codes=8, code_dim=4).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        quantised, loss, codes = vq(z.bfloat16())
    assert quantised.dtype == torch.float32 and vq.codebook.dtype == torch.float32
    (quantised.sum() + loss).backward()
    assert z.grad is not None and codes.shape == (2, 3, 3)


def test_eval_mode_leaves_codebook_untouched():
    vq = VectorQuantizer(num_codes=8, code_dim=4).train()
    vq(torch.randn(2, 4, 4, 4))
    before = vq.codebook.clone()
    vq.eval()
    vq(torch.randn(2, 4, 4, 4))
    assert torch.equal(before, vq.codebook)
