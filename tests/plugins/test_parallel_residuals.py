"""parallel_residuals: a hand-computed lane update at init and with learned values, the lane merge."""

import torch
from golf_plugins.parallel_residuals import LaneMix, merge_lanes


def test_lane_update_at_init():
    mix = LaneMix(1.1)
    a, m, A, M = (torch.full((1, 1, 2), v) for v in (1.0, 2.0, 10.0, 100.0))
    a2, m2 = mix(a, m, A, M)
    torch.testing.assert_close(a2, torch.full((1, 1, 2), 1.1 * 1 + 10 + 100))
    torch.testing.assert_close(m2, torch.full((1, 1, 2), 1.1 * 2 + 10 + 100))


def test_hand_computed_lane_update():
    mix = LaneMix(1.1)
    with torch.no_grad():
        mix.resid.copy_(torch.tensor([0.5, 2.0]))
        mix.post.copy_(torch.tensor([[1.0, 0.0], [3.0, -1.0]]))  # rows: from attention, from MLP; columns: lanes
    a, m, A, M = (torch.tensor([v]) for v in (1.0, 2.0, 10.0, 100.0))
    a2, m2 = mix(a, m, A, M)
    assert a2.item() == 0.5 * 1 + 1 * 10 + 3 * 100  # 310.5
    assert m2.item() == 2 * 2 + 0 * 10 - 1 * 100  # -96


def test_merge():
    a, m = torch.tensor([1.0]), torch.tensor([3.0])
    assert [merge_lanes(a, m, k).item() for k in ("mean", "attn", "mlp")] == [2.0, 1.0, 3.0]
