import pytest
import torch

from vqvae.prior import GatedPixelCNN


def tiny_prior(**kw):
    torch.manual_seed(0)
    prior = GatedPixelCNN(**{"num_codes": 16, "channels": 8, "layers": 3, "kernel": 5,
                             "num_positions": 4, "grid_size": 8, **kw})
    for layer in prior.layers:  # the condition and location biases start at zero; make them matter
        torch.nn.init.normal_(layer.condition.weight, std=0.5)
        if layer.coordinate is not None:
            torch.nn.init.normal_(layer.coordinate.weight, std=0.5)
        if layer.previous is not None:
            torch.nn.init.normal_(layer.previous.weight, std=3.0)
    for block in prior.attention.values():  # attention outputs start at zero too
        torch.nn.init.normal_(block.out.weight, std=1.0)
    return prior.double()


@pytest.mark.parametrize("coordinates", [0, 3])
@pytest.mark.parametrize("attention_every", [0, 1])
def test_logits_depend_only_on_earlier_positions(coordinates, attention_every):
    prior = tiny_prior(coordinates=coordinates, attention_every=attention_every)
    codes = torch.randint(0, 16, (1, 8, 8))
    base = prior(codes, torch.tensor([1]))
    for i in range(8):
        for j in range(8):
            changed = codes.clone()
            changed[0, i, j] = (changed[0, i, j] + 1) % 16
            diff = (prior(changed, torch.tensor([1])) - base).abs().sum(1)[0].flatten()
            position = i * 8 + j
            assert diff[:position + 1].max() == 0  # nothing at or before (i, j) moves
            assert position == 63 or diff[position + 1:].max() > 0  # something after it does


def test_no_blind_spot_the_pixel_up_right_is_seen():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (1, 8, 8))
    changed = codes.clone()
    changed[0, 3, 6] = (changed[0, 3, 6] + 1) % 16  # above and to the right of (4, 4)
    diff = (prior(changed) - prior(codes)).abs().sum(1)[0]
    assert diff[4, 4] > 0


def test_position_condition_and_no_position():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (2, 8, 8))
    a = prior(codes, torch.tensor([0, 0]))
    b = prior(codes, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)
    assert torch.equal(prior(codes, torch.tensor([-1, -1])), prior(codes, None))


def test_location_bias_starts_at_zero_then_depends_on_where_a_code_sits():
    codes = torch.zeros((1, 8, 8), dtype=torch.long)  # the same code everywhere
    plain, located = tiny_prior(), tiny_prior(coordinates=3)
    for layer in located.layers:
        torch.nn.init.zeros_(layer.coordinate.weight)
    located.load_state_dict(plain.state_dict(), strict=False)  # what train.prior --init does
    assert torch.equal(plain(codes), located(codes))
    located = tiny_prior(coordinates=3)
    logits = located(codes)[0, :, 4]  # row 4: same code all along it, same left context shape
    assert not torch.allclose(logits[:, 5], logits[:, 6])


def test_loss_decreases_when_training_on_a_pattern():
    prior = GatedPixelCNN(num_codes=4, channels=8, layers=2, kernel=3, num_positions=2, grid_size=6)
    codes = (torch.arange(36).view(1, 6, 6) % 4).repeat(8, 1, 1)  # a fully predictable grid
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    first = prior.loss(codes).item()
    for _ in range(60):
        loss = prior.loss(codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first


@pytest.mark.parametrize("coordinates", [0, 3])
def test_save_and_load(tmp_path, coordinates):
    prior = tiny_prior(coordinates=coordinates).float()
    prior.save_pretrained(tmp_path)
    loaded = GatedPixelCNN.from_pretrained(tmp_path)
    codes = torch.randint(0, 16, (1, 8, 8))
    assert loaded.grid_size == 8 and torch.equal(loaded(codes), prior(codes))


def test_the_slice_below_conditions_every_position_and_starts_silent():
    prior = tiny_prior(previous_slice=4)
    codes = torch.randint(0, 16, (2, 8, 8))
    below, other = torch.randint(0, 16, (2, 8, 8)), torch.randint(0, 16, (2, 8, 8))
    logits = prior(codes, None, below)
    assert not torch.allclose(logits[:, :, 0, 0], prior(codes, None, other)[:, :, 0, 0])  # seen from the first code
    # causality in the current slice is untouched
    changed = codes.clone()
    changed[:, 4, 4] = (changed[:, 4, 4] + 1) % 16
    assert torch.equal(prior(changed, None, below)[:, :, :4], logits[:, :, :4])
    fresh = GatedPixelCNN(num_codes=16, channels=8, layers=3, num_positions=4, grid_size=8, previous_slice=4)
    plain = GatedPixelCNN(num_codes=16, channels=8, layers=3, num_positions=4, grid_size=8)
    fresh.load_state_dict(plain.state_dict(), strict=False)  # --init from a prior without it
    assert torch.equal(fresh(codes, None, below), plain(codes))


def test_attention_starts_silent_then_reaches_the_whole_past():
    """Attention blocks start at zero (a prior without them is their exact start), and once
    trained a code sees far earlier positions that the convolutions alone cannot reach."""
    plain = tiny_prior(layers=2, kernel=3)
    with_attention = GatedPixelCNN(**{"num_codes": 16, "channels": 8, "layers": 2, "kernel": 3,
                                      "num_positions": 4, "grid_size": 8, "attention_every": 1}).double()
    from vqvae.training import load_into
    load_into(with_attention, plain, new=("attention",))
    codes = torch.randint(0, 16, (2, 8, 8))
    assert torch.equal(plain(codes), with_attention(codes))
    far = codes.clone()
    far[:, 0, 0] = (far[:, 0, 0] + 1) % 16  # 7 rows above the last row: out of the convolutions' reach
    assert torch.equal(plain(codes)[:, :, 7], plain(far)[:, :, 7])
    torch.nn.init.normal_(with_attention.attention["0"].out.weight)
    assert not torch.equal(with_attention(codes)[:, :, 7], with_attention(far)[:, :, 7])
