import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from golfcore.config import OptimSection
from golfcore.optim import (
    QUINTIC,
    Muon,
    Orthogonalization,
    apply_lr_scale,
    build_optimizers,
    clip_grad_norm,
    muon_momentum_at,
    set_muon_momentum,
    zeropower_newton_schulz,
)
from golfcore.params import declare
from golf_plugins.polar_express import POLAR_EXPRESS


def _with_singular_values(s: torch.Tensor, rows: int, cols: int, seed: int = 0):
    """A [rows, cols] matrix U·diag(s)·Vᵀ with random orthonormal U, V; returns (matrix, U·Vᵀ)."""
    gen = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=gen))
    return u @ torch.diag(s) @ v.T, u @ v.T


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (512, 1536), (3, 100)])
def test_newton_schulz_rectangular_random_lands_in_quintic_band(shape):
    # Random rectangular matrices are well conditioned; the quintic coefficients take every
    # singular value into about [0.68, 1.2] (not exactly 1: they trade exactness for speed).
    torch.manual_seed(0)
    x = zeropower_newton_schulz(torch.randn(shape))
    assert x.shape == shape and x.dtype == torch.float32
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.6 and s.max() < 1.25


def test_newton_schulz_keeps_singular_vectors_and_tiny_values_stay_small():
    # ||G||_F ~ 10.5, so these are normalised singular values ~0.95 ... 0.0038 and 1e-5:
    # those >= ~0.003 reach [0.5, 1.25]; 1e-5 is only multiplied by ~a^5 ~ 490 in 5 steps.
    s = torch.tensor([10.0, 3.0, 1.0, 0.1, 0.04, 1e-4])
    g, polar = _with_singular_values(s, 6, 9)
    x = zeropower_newton_schulz(g)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    f = u.T @ x @ vh.T  # diagonal iff X shares G's singular vectors
    assert torch.allclose(f, torch.diag(torch.diagonal(f)), atol=1e-4)
    f = torch.diagonal(f)
    assert f[:5].min() > 0.5 and f.max() < 1.25
    assert f[5] < 0.1
    assert torch.linalg.norm(x - polar) / torch.linalg.norm(polar) < 0.5


def test_newton_schulz_square_bulk_and_batched_and_zero():
    torch.manual_seed(0)
    g = torch.randn(3, 128, 128)
    x = zeropower_newton_schulz(g)
    assert x.shape == g.shape
    for i in range(3):
        s = torch.linalg.svdvals(x[i])
        assert s.max() < 1.25 and s.median() > 0.6  # only the near-null directions stay small
        assert torch.allclose(x[i], zeropower_newton_schulz(g[i]), atol=1e-5)
    assert torch.equal(zeropower_newton_schulz(torch.zeros(4, 6)), torch.zeros(4, 6))


def test_newton_schulz_returns_input_dtype():
    g = torch.randn(8, 16, dtype=torch.bfloat16)
    assert zeropower_newton_schulz(g).dtype == torch.bfloat16


def test_muon_decreases_quadratic_loss():
    torch.manual_seed(0)
    target = torch.randn(16, 32)
    w = nn.Parameter(torch.zeros(16, 32))
    opt = Muon([w], lr=0.1, momentum=0.9)
    losses = []
    for _ in range(100):
        loss = ((w - target) ** 2).sum()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.01 * losses[0]


def test_muon_first_step_matches_formula():
    torch.manual_seed(0)
    w0 = torch.randn(8, 4)
    g = torch.randn(8, 4)
    w = nn.Parameter(w0.clone())
    w.grad = g.clone()
    lr, mu, wd = 0.1, 0.9, 0.5
    Muon([w], lr=lr, momentum=mu, weight_decay=wd).step()
    u = g + mu * g  # buf = g on the first step; nesterov
    expected = w0 * (1 - lr * wd) - lr * math.sqrt(8 / 4) * zeropower_newton_schulz(u)
    assert torch.allclose(w.detach(), expected, atol=1e-6)


def test_muon_weight_decay_alone_with_zero_grad():
    w0 = torch.randn(8, 4)
    w = nn.Parameter(w0.clone())
    w.grad = torch.zeros_like(w)
    Muon([w], lr=0.1, momentum=0.95, weight_decay=0.2).step()
    assert torch.equal(w.detach(), w0 * (1 - 0.1 * 0.2))
    assert torch.isfinite(w).all()


def test_muon_skips_params_without_grad_and_rejects_non_2d():
    w = nn.Parameter(torch.ones(3, 3))
    Muon([w], lr=0.1, momentum=0.9, weight_decay=0.5).step()
    assert torch.equal(w.detach(), torch.ones(3, 3))
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = declare(nn.Parameter(torch.randn(10, 4)), "embed", "embedding")
        self.w1 = declare(nn.Parameter(torch.randn(4, 4)), "matrix", "quantize")
        self.w2 = declare(nn.Parameter(torch.randn(8, 4)), "matrix", "quantize")
        self.gain = declare(nn.Parameter(torch.ones(4)), "scalar", "float32")


def test_build_optimizers_groups_from_declarations():
    model = _Tiny()
    cfg = OptimSection(matrix_lr=0.03, embed_lr=0.06, scalar_lr=0.01, adam_beta1=0.8, adam_beta2=0.9, adam_eps=1e-6, adam_weight_decay=0.1, muon_weight_decay=0.02)
    muon, adam = build_optimizers(model, cfg)
    assert isinstance(muon, Muon)
    (mg,) = muon.param_groups
    assert [id(p) for p in mg["params"]] == [id(model.w1), id(model.w2)]
    assert mg["lr"] == mg["base_lr"] == 0.03
    assert mg["momentum"] == cfg.muon_momentum_warmup_start and mg["weight_decay"] == 0.02
    assert mg["backend_steps"] == cfg.muon_backend_steps and mg["nesterov"]
    assert isinstance(adam, torch.optim.AdamW)
    groups = {g["name"]: g for g in adam.param_groups}
    assert [id(p) for p in groups["embed"]["params"]] == [id(model.emb)]
    assert [id(p) for p in groups["scalar"]["params"]] == [id(model.gain)]
    assert groups["embed"]["lr"] == groups["embed"]["base_lr"] == 0.06
    assert groups["scalar"]["lr"] == groups["scalar"]["base_lr"] == 0.01
    for g in adam.param_groups:
        assert g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 and g["weight_decay"] == 0.1
        assert not g["fused"]


def test_build_optimizers_skips_empty_groups():
    model = nn.Module()
    model.gain = declare(nn.Parameter(torch.ones(4)), "scalar", "float32")
    (adam,) = build_optimizers(model, OptimSection())
    assert [g["name"] for g in adam.param_groups] == ["scalar"]
    model = nn.Module()
    model.w = declare(nn.Parameter(torch.ones(4, 4)), "matrix", "quantize")
    (muon,) = build_optimizers(model, OptimSection())
    assert isinstance(muon, Muon)


def test_build_optimizers_errors():
    model = _Tiny()
    model.bias = nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="'bias'"):
        build_optimizers(model, OptimSection())
    model = _Tiny()
    model.cube = declare(nn.Parameter(torch.zeros(2, 2, 2)), "matrix", "quantize")
    with pytest.raises(ValueError, match="'cube'.*2-D"):
        build_optimizers(model, OptimSection())


def test_build_optimizers_steps_every_param():
    model = _Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model.emb.sum() + (model.w1 @ model.w2.T).pow(2).sum() + model.gain.pow(2).sum()
    loss.backward()
    for opt in build_optimizers(model, OptimSection()):
        opt.step()
    for n, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[n]), n


def test_apply_lr_scale():
    opts = build_optimizers(_Tiny(), OptimSection())
    apply_lr_scale(opts, 0.25)
    for opt in opts:
        for g in opt.param_groups:
            assert g["lr"] == g["base_lr"] * 0.25
    apply_lr_scale(opts, 1.0)
    assert opts[0].param_groups[0]["lr"] == OptimSection().matrix_lr
    bare = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match="base_lr"):
        apply_lr_scale([bare], 0.5)


def test_muon_momentum_warmup():
    cfg = OptimSection(muon_momentum=0.95, muon_momentum_warmup_start=0.85, muon_momentum_warmup_steps=500)
    assert muon_momentum_at(0, cfg) == pytest.approx(0.85)
    assert muon_momentum_at(250, cfg) == pytest.approx(0.90)
    assert muon_momentum_at(500, cfg) == pytest.approx(0.95)
    assert muon_momentum_at(10_000, cfg) == pytest.approx(0.95)
    assert muon_momentum_at(0, OptimSection(muon_momentum_warmup_steps=0)) == 0.95


def test_set_muon_momentum_touches_only_muon():
    opts = build_optimizers(_Tiny(), OptimSection())
    set_muon_momentum(opts, 0.9)
    muon, adam = opts
    assert muon.param_groups[0]["momentum"] == 0.9
    assert all("momentum" not in g for g in adam.param_groups)


def test_clip_grad_norm_uses_global_norm():
    model = _Tiny()
    grads = {n: torch.full_like(p, 1.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    total = math.sqrt(sum(g.numel() for g in grads.values()))
    norm = clip_grad_norm(model, 0.0)
    assert norm.item() == pytest.approx(total)
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())  # 0 = measure only
    norm = clip_grad_norm(model, 1.0)
    assert norm.item() == pytest.approx(total)
    after = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters()))
    assert after == pytest.approx(1.0, rel=1e-4)
    # every tensor scaled by the same factor (a global clip, not per tensor)
    assert all(torch.allclose(p.grad, grads[n] / total, rtol=1e-4) for n, p in model.named_parameters())


def test_clip_grad_norm_without_grads():
    assert clip_grad_norm(_Tiny(), 1.0).item() == 0.0


def _matrices(seed: int = 0) -> list[torch.Tensor]:
    """Three shapes, with 3, 1 and 2 matrices: uneven shares on 2 ranks, one rank idle for a shape."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 8)] * 3 + [(8, 24)] + [(12, 12)] * 2
    return [torch.randn(shape, generator=g) for shape in shapes]


def _muon_steps(muon_kwargs: dict, steps: int = 3) -> list[torch.Tensor]:
    params = [nn.Parameter(w) for w in _matrices(0)]
    opt = Muon(params, lr=0.05, momentum=0.9, weight_decay=0.1, **muon_kwargs)
    for step in range(steps):
        for p, g in zip(params, _matrices(step + 1)):
            p.grad = g
        opt.step()
    return [p.detach().clone() for p in params]


def test_batched_newton_schulz_equals_one_matrix_at_a_time():
    stack = torch.stack(_matrices()[:3])  # [3, 16, 8]
    batched = zeropower_newton_schulz(stack)
    for i in range(3):
        assert torch.allclose(batched[i], zeropower_newton_schulz(stack[i]), atol=1e-6)


def test_muon_step_equals_the_per_matrix_formula():
    """The by-shape batched step gives the per-matrix update (momentum, nesterov, decay, NS, √(rows/cols))."""
    got = _muon_steps({})
    params = _matrices(0)
    bufs = [torch.zeros_like(w) for w in params]
    for step in range(3):
        for i, g in enumerate(_matrices(step + 1)):
            bufs[i] = 0.9 * bufs[i] + g
            u = g + 0.9 * bufs[i]
            rows, cols = params[i].shape
            params[i] = params[i] * (1 - 0.05 * 0.1) - 0.05 * math.sqrt(max(1, rows / cols)) * zeropower_newton_schulz(u)
    for a, b in zip(got, params):
        assert torch.allclose(a, b, atol=1e-6)


def test_ns_dtype_is_the_muon_option():
    bf16 = _muon_steps({"ns_dtype": torch.bfloat16}, steps=1)
    fp32 = _muon_steps({"ns_dtype": torch.float32}, steps=1)
    assert all(w.dtype == torch.float32 for w in bf16)
    diffs = [float((a - b).abs().max()) for a, b in zip(bf16, fp32)]
    assert 0 < max(diffs) < 0.01  # bf16 rounding shows, but only at its precision (lr 0.05 x ~1e-1)
    muon, _ = build_optimizers(_Tiny(), OptimSection(muon_ns_dtype="bfloat16"))
    assert muon.ns_dtype == torch.bfloat16
    muon, _ = build_optimizers(_Tiny(), OptimSection())
    assert muon.ns_dtype == torch.float32  # auto on CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROW_POLAR = Orthogonalization(POLAR_EXPRESS, "rows")


def _sharded_rank(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        weights = _muon_steps({"rank": rank, "world_size": world_size, "ns_dtype": torch.float32})
        torch.save(weights, out / f"rank{rank}.pt")
        # rank and world size from torch.distributed, as for a Muon a plugin builds
        weights = _muon_steps({"ns_dtype": torch.float32, "orthogonalization": ROW_POLAR})
        torch.save(weights, out / f"rank{rank}-row-polar.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sharded_newton_schulz_on_two_gloo_processes_equals_one_process(tmp_path):
    """Each rank orthogonalises its share of every shape's stack and all-gathers the rest: both ranks
    end with the single-process weights (to 1e-6: each NS runs on a differently sized stack), with
    the default and with Polar Express coefficients on row-normalised updates."""
    mp.spawn(_sharded_rank, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    for suffix, options in (("", {}), ("-row-polar", {"orthogonalization": ROW_POLAR})):
        single = _muon_steps({"ns_dtype": torch.float32, **options})
        ranks = [torch.load(tmp_path / f"rank{r}{suffix}.pt") for r in range(2)]
        for i, w in enumerate(single):
            assert torch.equal(ranks[0][i], ranks[1][i])  # identical on every rank
            assert torch.allclose(ranks[0][i], w, atol=1e-6), (suffix, i)
    assert not torch.allclose(single[0], _muon_steps({"ns_dtype": torch.float32})[0])  # the options changed the result


# ----------------------------------------------------------------------------- per-iteration coefficients, normalisation


def test_polar_express_is_its_five_scalar_polynomials_on_the_singular_values():
    """Hand computation: X_{i+1} = a_i X + b_i (X Xᵀ) X + c_i (X Xᵀ)² X, step by step on a 3x5 matrix in
    float64; and, directly, g = U S Vᵀ goes to U p(S/‖g‖_F) Vᵀ with p the composition of the odd
    quintics s -> a_i s + b_i s³ + c_i s⁵ (the iteration keeps singular vectors)."""
    g = torch.tensor([[1.0, 2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 3.0, 1.0, -2.0], [2.0, -1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    x = g / (g.norm() + 1e-7)
    for a, b, c in POLAR_EXPRESS:
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    got = zeropower_newton_schulz(g, steps=5, dtype=torch.float64, coefficients=POLAR_EXPRESS)
    assert torch.allclose(got, x, atol=1e-12)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    s = s / (g.norm() + 1e-7)
    for a, b, c in POLAR_EXPRESS:
        s = a * s + b * s**3 + c * s**5
    assert torch.allclose(got, u @ torch.diag(s) @ vh, atol=1e-10)


def test_coefficients_past_the_last_repeat_it_and_one_triple_is_the_quintic():
    g = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seven = zeropower_newton_schulz(g, steps=7, dtype=torch.float64, coefficients=POLAR_EXPRESS)
    extended = POLAR_EXPRESS + (POLAR_EXPRESS[-1],) * 2
    assert torch.equal(seven, zeropower_newton_schulz(g, steps=7, dtype=torch.float64, coefficients=extended))
    three = zeropower_newton_schulz(g, steps=3, dtype=torch.float64, coefficients=POLAR_EXPRESS)
    assert torch.equal(three, zeropower_newton_schulz(g, steps=3, dtype=torch.float64, coefficients=POLAR_EXPRESS[:3]))
    assert torch.equal(zeropower_newton_schulz(g), zeropower_newton_schulz(g, coefficients=QUINTIC * 5))
    assert Orthogonalization() == Orthogonalization(QUINTIC, "none")  # the default is today's Muon


def test_polar_express_lands_nearer_one_than_the_quintic():
    torch.manual_seed(0)
    g = torch.randn(64, 256)
    quintic = torch.linalg.svdvals(zeropower_newton_schulz(g))
    polar = torch.linalg.svdvals(zeropower_newton_schulz(g, coefficients=POLAR_EXPRESS))
    assert (polar - 1).abs().max() < (quintic - 1).abs().max()


def test_row_normalisation_by_hand_and_invariance_to_row_scaling():
    u = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    by_hand = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # rows / (5, 2, 1)
    got = zeropower_newton_schulz(u, dtype=torch.float64, normalize="rows")
    assert torch.allclose(got, zeropower_newton_schulz(by_hand, dtype=torch.float64), atol=1e-12)
    by_hand = u / torch.tensor([[10**0.5, 20**0.5]], dtype=torch.float64)  # columns / (√10, √20)
    got = zeropower_newton_schulz(u, dtype=torch.float64, normalize="columns")
    assert torch.allclose(got, zeropower_newton_schulz(by_hand, dtype=torch.float64), atol=1e-12)
    g = torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(0))  # a stack: each matrix's own rows
    scaled = g * torch.tensor([1e-3, 1.0, 7.0, 0.2, 50.0, 1.0, 3.0, 0.01])[:, None]
    assert torch.allclose(zeropower_newton_schulz(scaled, normalize="rows"), zeropower_newton_schulz(g, normalize="rows"), atol=1e-5)
    assert not torch.allclose(zeropower_newton_schulz(scaled), zeropower_newton_schulz(g), atol=1e-2)
    assert torch.equal(zeropower_newton_schulz(torch.zeros(3, 4), normalize="rows"), torch.zeros(3, 4))


def test_muon_first_step_with_polar_express_on_normalised_rows():
    torch.manual_seed(0)
    w0, g = torch.randn(8, 4), torch.randn(8, 4)
    w = nn.Parameter(w0.clone())
    w.grad = g.clone()
    ortho = Orthogonalization(POLAR_EXPRESS, "rows")
    Muon([w], lr=0.1, momentum=0.9, orthogonalization=ortho).step()
    u = g + 0.9 * g
    u = u / u.norm(dim=1, keepdim=True)
    expected = w0 - 0.1 * math.sqrt(8 / 4) * zeropower_newton_schulz(u, coefficients=POLAR_EXPRESS)
    assert torch.allclose(w.detach(), expected, atol=1e-6)
    ortho.normalize = "none"  # Muon keeps its own copy
    assert w.grad is not None and Muon([w], lr=0.1, momentum=0.9, orthogonalization=ortho).orthogonalization.normalize == "none"


def test_orthogonalization_rejects_bad_values():
    with pytest.raises(ValueError, match="triples"):
        Orthogonalization(((1.0, 2.0),))
    with pytest.raises(ValueError, match="normalize"):
        Orthogonalization(QUINTIC, "diagonal")
