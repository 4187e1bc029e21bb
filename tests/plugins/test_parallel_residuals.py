"""parallel_residuals: a hand-computed lane update, the model's forward against a direct two-lane
computation from its own modules, skips into the attention lane, the record's parameter layout,
placement rules, training, config."""

import math

import pytest
import torch
from golf_plugins.parallel_residuals import Config, LanedBlock, LanedSplitBlock, LaneMix, ParallelBlock, ParallelResiduals, SplitBlock
import golfcore as golf
from golfcore.errors import ConfigError
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import build, tiny_config, train_briefly


def test_lane_update_at_init():
    mix = LaneMix()
    a, m, A, M = (torch.full((1, 1, 2), v) for v in (1.0, 2.0, 10.0, 100.0))
    a2, m2 = mix(a, m, A, M)
    torch.testing.assert_close(a2, torch.full((1, 1, 2), 1.1 * 1 + 10 + 100))
    torch.testing.assert_close(m2, torch.full((1, 1, 2), 1.1 * 2 + 10 + 100))


def test_hand_computed_lane_update():
    mix = LaneMix()
    with torch.no_grad():
        mix.resid.copy_(torch.tensor([0.5, 2.0]))
        mix.post.copy_(torch.tensor([[1.0, 0.0], [3.0, -1.0]]))  # rows: from attention, from MLP; columns: lanes
    a, m, A, M = (torch.tensor([v]) for v in (1.0, 2.0, 10.0, 100.0))
    a2, m2 = mix(a, m, A, M)
    assert a2.item() == 0.5 * 1 + 1 * 10 + 3 * 100  # 310.5
    assert m2.item() == 2 * 2 + 0 * 10 - 1 * 100  # -96


def model(cfg=None, layers=6):
    config, host, m = build((ParallelResiduals, cfg or Config(start=4)), config=tiny_config(num_layers=layers))
    torch.manual_seed(0)
    with torch.no_grad():  # every path reaches the logits
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return config, host, m


def direct_hidden(m, tokens):
    """6 layers (3 encoder, 3 decoder), lanes from layer 4, written out from the model's own modules."""
    norm = lambda t: torch.nn.functional.rms_norm(t, (t.size(-1),))  # noqa: E731
    x = norm(m.tok_emb(tokens))
    x0, ctx, skips = x, golf.ForwardContext(tokens), []
    for i in range(3):
        x = m.blocks[i](x, x0, m.layers[i], ctx)
        skips.append(x)
    connect = m.skips.connect  # the core's weighted skip, inside the lane wrapper
    x = golf.Block.forward(m.blocks[3], connect(x, skips.pop(), 0), x0, m.layers[3], ctx)
    a = mlane = x  # layer 3 starts both lanes
    for i, j in ((4, 1), (5, 2)):
        a = connect(a, skips.pop(), j)  # the skip enters the attention lane only
        blk, w = m.blocks[i], m.layers[i]
        mix = blk.resid_mix
        A = blk.attn_scale * blk.attention(norm(mix[0] * a + mix[1] * x0), w, ctx)
        M = blk.mlp_scale * blk.mlp(norm(mlane), w)  # the MLP reads its own lane, not a + A
        (r0, r1), P = blk.lanes.resid, blk.lanes.post
        a, mlane = r0 * a + P[0, 0] * A + P[1, 0] * M, r1 * mlane + P[0, 1] * A + P[1, 1] * M
    return norm(0.5 * (a + mlane))


def test_forward_is_the_two_lane_computation():
    _, _, m = model()
    assert [type(b) for b in m.blocks] == [golf.Block] * 3 + [SplitBlock, ParallelBlock, ParallelBlock]
    tokens = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(m.hidden(tokens), direct_hidden(m, tokens))


@pytest.mark.parametrize("final_lane", ["attn", "mlp"])
def test_final_lane(final_lane):
    _, _, m = model(Config(start=4, final_lane=final_lane))
    lanes = {}
    m.blocks[5].register_forward_hook(lambda mod, args, out: lanes.update(out=out))
    h = m.hidden(torch.randint(0, 64, (2, 9)))
    lane = lanes["out"][0 if final_lane == "attn" else 1]
    torch.testing.assert_close(h, torch.nn.functional.rms_norm(lane, (32,)))


def test_parameters_per_parallel_layer_and_the_records_layout():
    _, _, plain = build(config=tiny_config(num_layers=6))
    _, _, m = build((ParallelResiduals, Config(start=4)), config=tiny_config(num_layers=6))
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(m) - count(plain) == 2 * 6
    _, _, rec = build((ParallelResiduals, Config(start=4, all_layers=True)), config=tiny_config(num_layers=6))
    assert count(rec) - count(plain) == 6 * 6  # every physical layer's r and P, as the record allocates them
    assert [type(b) for b in rec.blocks] == [LanedBlock] * 3 + [LanedSplitBlock, ParallelBlock, ParallelBlock]
    tokens = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(rec.logits(tokens), m.logits(tokens))  # the extra ones are unused


def test_trains():
    config, host, m = model()
    before = m.blocks[5].lanes.post.detach().clone()
    outcome = train_briefly(config, host, m)
    assert math.isfinite(outcome.last_train_loss) and not torch.equal(m.blocks[5].lanes.post, before)


@pytest.mark.parametrize("start, layers", [(2, 6), (6, 6), (3, 6)])
def test_placement_rules(start, layers):
    # the split layer must run once, in the decoder: 1 is in the encoder, 6 is beyond the model,
    # 2 is the last encoder layer (its stacked output would be pushed as a skip)
    with pytest.raises(ConfigError, match=r"\[plugins.parallel_residuals\] start"):
        build((ParallelResiduals, Config(start=start)), config=tiny_config(num_layers=layers))


@pytest.mark.parametrize("table, key", [({"start": 0}, "start"), ({"final_lane": "both"}, "final_lane"), ({"all_layers": 1}, "all_layers")])
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.parallel_residuals\].*{key}"):
        resolve({"plugins": {"parallel_residuals": table}}, discover(), "<test>")
