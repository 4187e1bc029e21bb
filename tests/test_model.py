import torch
import torch.nn.functional as F

from golfcore.config import RunConfig
from golfcore.assemble import build_model
from golfcore.model import Rotary, count_parameters
from golfcore.params import param_specs
from tests.helpers import host_with, tiny_config


def test_baseline_parameter_count_matches_the_challenge():
    config = RunConfig()
    model = build_model(config, host_with(config), None)
    # train_gpt.py's naive baseline logs model_params:17059912
    assert count_parameters(model) == 17_059_912


def test_every_parameter_declares_group_and_export():
    config = tiny_config()
    specs = param_specs(build_model(config, host_with(config), None))
    assert specs["tok_emb.weight"].group == "embed" and specs["tok_emb.weight"].export == "embedding"
    assert specs["layers.0.q.weight"].group == "matrix" and specs["layers.0.q.weight"].export == "quantize"
    assert specs["blocks.0.resid_mix"].export == "float32"


def test_init_matches_baseline():
    config = tiny_config()
    model = build_model(config, host_with(config), None)
    assert torch.all(model.layers[0].o.weight == 0) and torch.all(model.layers[0].down.weight == 0)
    assert abs(model.tok_emb.weight.std().item() - 0.005) < 0.001
    assert torch.all(model.blocks[1].resid_mix[0] == 1) and torch.all(model.blocks[1].resid_mix[1] == 0)
    assert torch.allclose(model.blocks[0].q_gain, torch.full((4,), 1.5))
    # zero output projections: every block is the identity, so the logits come from the embedding alone
    tokens = torch.randint(0, 64, (2, 8))
    x = F.rms_norm(model.tok_emb(tokens), (32,))
    expected = F.linear(F.rms_norm(x, (32,)), model.tok_emb.weight)
    assert torch.allclose(model.logits(tokens), 30 * torch.tanh(expected / 30), atol=1e-5)


def test_unet_skips_and_softcap():
    config = tiny_config(num_layers=5)
    model = build_model(config, host_with(config), None)
    assert model.num_encoder == 2 and model.skips.weights.shape == (2, 32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.0)
    logits = model.logits(torch.randint(0, 64, (1, 8)))
    assert logits.abs().max() <= 30.0


def test_model_is_causal():
    config = tiny_config()
    model = build_model(config, host_with(config), None)
    with torch.no_grad():
        for layer in model.layers:
            layer.o.weight.normal_(0, 0.1)
            layer.down.weight.normal_(0, 0.1)
    a = torch.randint(0, 64, (1, 12))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 64
    assert torch.allclose(model.logprobs(a)[0, :7], model.logprobs(b)[0, :7], atol=1e-6)
    assert not torch.allclose(model.logprobs(a)[0, 7:], model.logprobs(b)[0, 7:])


def test_logprobs_normalized():
    config = tiny_config()
    model = build_model(config, host_with(config), None)
    lp = model.logprobs(torch.randint(0, 64, (2, 8)))
    assert torch.allclose(lp.logsumexp(-1), torch.zeros(2, 8), atol=1e-5)
    tokens = torch.randint(0, 64, (2, 8))
    assert torch.allclose(model.logprobs(tokens, last=3), model.logprobs(tokens)[:, -3:], atol=1e-6)


def test_rotary_is_a_rotation_and_partial_dims_untouched():
    x = torch.randn(2, 5, 3, 8)
    full = Rotary(8, 10000.0)(x)
    assert torch.allclose(full.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(full[:, 0], x[:, 0])  # position 0 is not rotated
    part = Rotary(8, 10000.0, dims=4)(x)
    assert torch.allclose(part[..., 4:], x[..., 4:])
    # relative: <R_m q, R_n k> depends on m - n only
    q, k = torch.randn(8), torch.randn(8)
    seq = torch.stack([q, k] * 3)[None, :, None, :]  # q at 0,2,4 ; k at 1,3,5
    r = Rotary(8, 100.0)(seq)[0, :, 0]
    assert torch.allclose(r[0] @ r[1], r[2] @ r[3], atol=1e-5)


def test_rotary_past_the_training_length_keeps_the_plain_base():
    """An eval window longer than training ([eval] seq_len > [train] seq_len) rotates position t
    by t * base^(-2i/dims) whatever the window length, as PR #1953 and #2135 ran (ROPE_YARN=0)."""
    x = torch.randn(1, 40, 2, 8)
    rotary = Rotary(8, 10000.0, dims=4)
    assert torch.allclose(rotary(x)[:, :32], rotary(x[:, :32]), atol=1e-6)
    t, inv = 39.0, 10000.0 ** (-torch.arange(0, 4, 2) / 4)
    cos, sin = (t * inv).cos(), (t * inv).sin()
    x1, x2 = x[0, 39, 0, :2], x[0, 39, 0, 2:4]
    assert torch.allclose(rotary(x)[0, 39, 0, :4], torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin)), atol=1e-5)


def test_seed_makes_builds_identical():
    config = tiny_config()
    a = build_model(config, host_with(config), None)
    b = build_model(config, host_with(config), None)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_bf16_activations_keep_the_residual_stream_bf16_with_fp32_weights():
    from golf_plugins.bigram_hash import BigramHashPlugin
    from golf_plugins.gated_attention import GatedAttention
    from golf_plugins.smear_gate import SmearGatePlugin
    from golf_plugins.value_residual import ValueResidual
    from golf_plugins.xsa import Xsa

    config = tiny_config()
    model = build_model(config, host_with(config, BigramHashPlugin, SmearGatePlugin, Xsa, ValueResidual, GatedAttention), None)
    residual = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, out: residual.append(out.dtype))
    tokens = torch.randint(0, 64, (2, 16))
    model.activation_dtype = torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(tokens, tokens)
    loss.backward()
    assert residual == [torch.bfloat16] * len(model.blocks)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    residual.clear()
    model.activation_dtype = torch.float32
    with torch.no_grad():
        fp32_loss = model(tokens, tokens)
    assert residual == [torch.float32] * len(model.blocks)
    assert abs(loss.item() - fp32_loss.item()) < 0.05  # the same function, at bf16 precision
