"""Full-Hessian GPTQ with SDClip steps, bits per role, LQER and AWQ-lite (docs/techniques.md §3.11; PR #1060, #1394, #1797, #1908).

Calibration: the quantizer asks for `calibration_batches` micro-batches of the training stream after
the last step (golf's calibration step, docs/techniques.md §3.12); each projection's inputs x give H = mean x xᵀ [in, in]
(the tied embedding's: the final hidden states the head multiplies by it).

Step per row (SDClip): s_r = fp16(k · std(w_r) / L), L = 2^(bits-1) - 1 levels a side, k per role
(`clip_sigmas`: the state key's last name, e.g. "up", or the module's `role`; "embedding" for
embedding tables). Values beyond ±L·s_r are clipped.

GPTQ (per matrix W [R, C] with H): damp H by `damping` · mean(diag H), order columns by
decreasing diag H (`act_order`), U = upper Cholesky factor of H⁻¹; column by column, q_j =
clamp(round(w_j / s), ±L) and the error (w_j - q_j s) / U_jj is pushed onto the columns not yet
quantized through row j of U (lazily, `block_size` columns at a time). Columns whose inputs were
always zero are quantized as zeros. A weight with no stats (nothing fed it during calibration)
is rounded to nearest on the same grid.

AWQ-lite: column saliency = rms(x_j) · mean_r |W_rj|; of all `awq_group_size`-column groups of all
calibrated tensors, the `awq_top_k` with the largest summed saliency are quantized at
`awq_bits` (their own step k · std / L_hi) inside the same GPTQ solve.

LQER: after quantizing, the `lqer_top_k` tensors with the largest ||W - Ŵ||_F get a rank-
`lqer_rank` correction A B (A = U_r S_r [R, r], B = V_rᵀ [r, C] from the SVD of W - Ŵ), stored
"asym": A in int2 (levels -2..1, one scale |A|max/1.5), B in int4 (levels -8..7, a scale
|·|max/7.5 per `lqer_group` values of B flattened); or "sym": both per row at `lqer_factor_bits`.

Small matrices: 2-D tensors declared "float16" (attention gates, projections of plugins) are stored
int8 per row (step |w_r|max / 127) with `small_matrix_int8`; tensors declared "float32" are stored
fp16 with `float32_as_float16`. Everything else follows the core (fp16, fp32, raw).

`row_step` / `fake_quantize` (late QAT, CROWN-Q) use the SDClip grid of a "quantize" matrix with
the default role's k, rounded to nearest: what GPTQ starts from, not what it ends at.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import golfcore as golf

DEFAULT_CLIP_SIGMAS = {"embedding": 14.0, "q": 13.0, "k": 13.0, "v": 13.0, "o": 13.0, "up": 11.5, "down": 11.5}


@dataclass
class Config(golf.Section):
    calibration_batches: int = golf.option(16, "training micro-batches after the last step whose inputs give the Hessians (0 = none: SDClip round-to-nearest)")
    calibration_reserve_seconds: float = golf.option(4.0, "training seconds the wallclock cap keeps back for calibration")
    matrix_bits: int = golf.option(6, "bits of \"quantize\" matrices (6: levels -31..31)")
    embedding_bits: int = golf.option(7, "bits of \"embedding\" tables (7: levels -63..63)")
    clip_sigmas: dict = golf.option(DEFAULT_CLIP_SIGMAS, "SDClip k per role: step = k * row std / levels")
    default_clip_sigmas: float = golf.option(12.85, "SDClip k of a role not in clip_sigmas")
    block_size: int = golf.option(128, "columns per lazy GPTQ block")
    damping: float = golf.option(0.01, "added to diag H, times its mean")
    act_order: bool = golf.option(True, "quantize columns in decreasing diag H order")
    small_matrix_int8: bool = golf.option(True, "2-D \"float16\" tensors (gates, small projections) stored int8 per row")
    float32_as_float16: bool = golf.option(True, "\"float32\" tensors (scales, mixes, skip weights) stored fp16, as PR #1855 stores every small float")
    lqer_rank: int = golf.option(4, "rank of the LQER correction (0 = off)")
    lqer_top_k: int = golf.option(3, "tensors with the largest quantization error that get it")
    lqer_packing: str = golf.option("asym", "\"asym\": A int2, B int4 per group; \"sym\": both per row at lqer_factor_bits")
    lqer_factor_bits: int = golf.option(4, "bits of A and B with sym packing")
    lqer_group: int = golf.option(64, "values of B per int4 scale with asym packing")
    awq_top_k: int = golf.option(0, "column groups kept at awq_bits (0 = off; PR #1908: 1)")
    awq_group_size: int = golf.option(64, "columns per AWQ-lite group")
    awq_bits: int = golf.option(8, "bits of the salient groups")

    def check(self) -> None:
        for key in ("matrix_bits", "embedding_bits", "awq_bits", "lqer_factor_bits"):
            if not 2 <= getattr(self, key) <= 8:
                raise self.invalid(key, f"{getattr(self, key)} is not in 2..8 (levels are stored in int8)")
        for key in ("calibration_batches", "lqer_rank", "lqer_top_k", "awq_top_k"):
            if getattr(self, key) < 0:
                raise self.invalid(key, "must be >= 0")
        for key in ("block_size", "lqer_group", "awq_group_size"):
            if getattr(self, key) < 1:
                raise self.invalid(key, "must be >= 1")
        if self.calibration_reserve_seconds < 0 or self.damping < 0:
            raise self.invalid("damping", "damping and calibration_reserve_seconds must be >= 0")
        if self.lqer_packing not in ("asym", "sym"):
            raise self.invalid("lqer_packing", f"{self.lqer_packing!r} is not \"asym\" or \"sym\"")
        if any(not isinstance(v, (int, float)) or v <= 0 for v in self.clip_sigmas.values()):
            raise self.invalid("clip_sigmas", "every k must be a number > 0")


def levels_of(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def sdclip_step(w: Tensor, k: float, max_level: int) -> Tensor:
    """[rows] fp32 holding fp16 values: k · std(w_r) / max_level (differentiable through std)."""
    raw = k * w.float().std(dim=-1) / max_level
    return raw + (golf.fp16_round(raw.detach()) - raw).detach()


def round_levels(w: Tensor, step: Tensor, max_level: int | Tensor) -> Tensor:
    """clamp(round(w / step), ±max_level); 0 where the step is 0 (a constant row or fp16 underflow)."""
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.maximum(torch.minimum(torch.round(w / safe), torch.as_tensor(max_level, device=w.device)), -torch.as_tensor(max_level, device=w.device))
    return torch.where(step > 0, q, torch.zeros_like(q))


def gptq_levels(w: Tensor, hessian: Tensor, step: Tensor, max_level: int, block_size: int = 128, damping: float = 0.01,
                act_order: bool = True, hi_cols: Tensor | None = None, hi_step: Tensor | None = None,
                hi_max_level: int = 127) -> Tensor:
    """Levels [R, C] (float) of w [R, C] on the per-row grid `step` [R], chosen by GPTQ with input
    second moments `hessian` [C, C]. Columns where `hi_cols` [C] is True use `hi_step` / `hi_max_level`."""
    W = w.detach().float().clone()
    H = hessian.to(W.device).float().clone()
    rows, cols = W.shape
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(damping * H.diagonal().mean())
    perm = torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # Uᵀ U = H⁻¹
    s = step.float().unsqueeze(1).expand(rows, cols).clone()  # [R, C] step of each column
    top = torch.full((cols,), float(max_level), device=W.device)
    if hi_cols is not None:
        s[:, hi_cols] = hi_step.float().unsqueeze(1)
        top[hi_cols] = float(hi_max_level)
    s, top = s[:, perm], top[perm]
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        block = W[:, i1:i2].clone()
        err = torch.zeros(rows, i2 - i1, device=W.device)
        for j in range(i2 - i1):
            c = i1 + j
            q = round_levels(block[:, j], s[:, c], top[c])
            Q[:, c] = q
            err[:, j] = (block[:, j] - q * s[:, c]) / U[c, c]
            block[:, j:] -= err[:, j : j + 1] * U[c, c:i2].unsqueeze(0)
        W[:, i2:] -= err @ U[i1:i2, i2:]
    return Q[:, torch.argsort(perm)]


def awq_group_scores(w: Tensor, channel_rms: Tensor, group_size: int) -> Tensor:
    """[C // group_size] summed saliency rms(x_j) · mean_r |W_rj| of each whole column group."""
    saliency = channel_rms.to(w.device).float() * w.detach().float().abs().mean(0)
    n = w.size(1) // group_size
    return saliency[: n * group_size].reshape(n, group_size).sum(1)


def pack_factors(A: Tensor, B: Tensor, packing: str, bits: int = 4, group: int = 64) -> tuple[dict[str, Tensor], dict]:
    """LQER factors A [R, r], B [r, C] as integer levels and fp16 scales: (tensors, info)."""
    if packing == "asym" and B.numel() % group == 0:
        sA = golf.fp16_round(A.abs().amax().clamp_min(1e-8) / 1.5)
        qA = round_levels(A, sA, 2).clamp(-2, 1)  # int2: -2..1
        Bg = B.reshape(-1, group)
        sB = golf.fp16_round(Bg.abs().amax(1).clamp_min(1e-8) / 7.5)  # [r*C/group]
        qB = round_levels(Bg, sB.unsqueeze(1), 8).clamp(-8, 7).reshape(B.shape)  # int4: -8..7
        return {"A": qA, "A_scale": sA.reshape(1), "B": qB, "B_scale": sB}, {"packing": "asym", "group": group}
    top = levels_of(bits)
    sA = golf.fp16_round(A.abs().amax(1).clamp_min(1e-8) / top)
    sB = golf.fp16_round(B.abs().amax(1).clamp_min(1e-8) / top)
    return ({"A": round_levels(A, sA.unsqueeze(1), top), "A_scale": sA, "B": round_levels(B, sB.unsqueeze(1), top), "B_scale": sB},
            {"packing": "sym"})


def unpack_factors(t: dict[str, Tensor], info: dict) -> Tensor:
    """A B [R, C] from `pack_factors`' tensors."""
    A, B = t["A"].float(), t["B"].float()
    if info["packing"] == "asym":
        return (A * t["A_scale"].float()) @ (B.reshape(-1, info["group"]) * t["B_scale"].float().unsqueeze(1)).reshape(B.shape)
    return (A * t["A_scale"].float().unsqueeze(1)) @ (B * t["B_scale"].float().unsqueeze(1))


class GptqQuantizer(golf.Int8Quantizer):
    """golf.Quantizer: GPTQ/SDClip integer rows for "quantize" and "embedding" tensors, see the module doc."""

    name = "gptq"

    def __init__(self, cfg: Config, float_max_numel: int = 65536):
        super().__init__(float_max_numel)
        self.cfg = cfg
        self.max_level = levels_of(cfg.matrix_bits)  # artifact projections read it, and float32_bits
        self.float32_bits = 16 if cfg.float32_as_float16 else 32
        self.calibration_batches = cfg.calibration_batches
        self.calibration_reserve_seconds = cfg.calibration_reserve_seconds
        self.stats: dict = {}  # weight name -> golf.InputStats, from calibrate
        self.prepared: dict[str, tuple[dict[str, Tensor], dict]] = {}

    def calibrate(self, stats: dict) -> None:
        self.stats = dict(stats)

    def role(self, name: str, export: str) -> str:
        if export == "embedding":
            return "embedding"
        stats = self.stats.get(name)
        if stats is not None and stats.role:
            return stats.role
        parts = name.split(".")
        return parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1]

    def _integer_export(self, tensor: Tensor, export: str) -> bool:
        return tensor.is_floating_point() and tensor.ndim == 2 and export in ("quantize", "embedding") and tensor.numel() > self.float_max_numel

    def prepare(self, state: dict[str, Tensor], specs: dict) -> None:
        """Quantize every integer tensor of `state` at once: AWQ-lite and LQER choose among all of them."""
        todo = {n: (t.detach(), specs[n].export) for n, t in state.items() if n in specs and self._integer_export(t, specs[n].export)}
        hi = self._awq_groups(todo)
        self.prepared = {}
        errors = {}
        for name, (w, export) in todo.items():
            stored, info = self._quantize_rows(name, w, export, hi.get(name, []))
            self.prepared[name] = (stored, info)
            errors[name] = (w.float() - self._dequantize_rows(name, stored, info)).norm().item()
        c = self.cfg
        if c.lqer_rank > 0:
            for name in sorted(errors, key=lambda n: -errors[n])[: c.lqer_top_k]:
                stored, info = self.prepared[name]
                E = todo[name][0].float() - self._dequantize_rows(name, stored, info)
                U, S, Vh = torch.linalg.svd(E, full_matrices=False)
                r = min(c.lqer_rank, S.numel())
                factors, finfo = pack_factors(U[:, :r] * S[:r], Vh[:r], c.lqer_packing, c.lqer_factor_bits, c.lqer_group)
                stored.update({f"{name}.lqer_{k}": v.to(torch.int8 if k in ("A", "B") else torch.float16) for k, v in factors.items()})
                info["lqer"] = {**finfo, "rank": r}

    def _awq_groups(self, todo: dict) -> dict[str, list[int]]:
        """name -> first columns of its groups kept at awq_bits: the awq_top_k most salient of all."""
        c = self.cfg
        if c.awq_top_k <= 0:
            return {}
        candidates = []
        for name, (w, export) in todo.items():
            bits = c.embedding_bits if export == "embedding" else c.matrix_bits
            if name in self.stats and bits < c.awq_bits:
                scores = awq_group_scores(w, self.stats[name].channel_rms, c.awq_group_size)
                candidates += [(float(s), name, g * c.awq_group_size) for g, s in enumerate(scores.tolist())]
        out: dict[str, list[int]] = {}
        for _, name, start in sorted(candidates, key=lambda x: -x[0])[: c.awq_top_k]:
            out.setdefault(name, []).append(start)
        return {n: sorted(s) for n, s in out.items()}

    def _quantize_rows(self, name: str, w: Tensor, export: str, hi_starts: list[int]) -> tuple[dict[str, Tensor], dict]:
        c = self.cfg
        golf.to_float16(name, w.float().abs().amax())  # refuse values fp16 steps cannot express
        top = levels_of(c.embedding_bits if export == "embedding" else c.matrix_bits)
        k = float(c.clip_sigmas.get(self.role(name, export), c.default_clip_sigmas))
        step = sdclip_step(w, k, top).detach()
        info: dict = {"scheme": "gptq" if name in self.stats else "sdclip", "max_level": top, "k": k}
        stored = {f"{name}.scale": step.to(torch.float16)}
        hi_cols = hi_step = None
        if hi_starts:
            hi_cols = torch.zeros(w.size(1), dtype=torch.bool, device=w.device)
            for start in hi_starts:
                hi_cols[start : start + c.awq_group_size] = True
            hi_top = levels_of(c.awq_bits)
            hi_step = sdclip_step(w, k, hi_top).detach()
            stored[f"{name}.scale_hi"] = hi_step.to(torch.float16)
            info["hi"] = {"starts": hi_starts, "size": c.awq_group_size, "max_level": hi_top}
        if name in self.stats:
            q = gptq_levels(w, self.stats[name].hessian, step, top, c.block_size, c.damping, c.act_order, hi_cols, hi_step,
                            levels_of(c.awq_bits))
        else:
            q = round_levels(w.float(), step.unsqueeze(1), top)
            if hi_cols is not None:
                q[:, hi_cols] = round_levels(w.float()[:, hi_cols], hi_step.unsqueeze(1), levels_of(c.awq_bits))
        stored[f"{name}.q"] = q.to(torch.int8)
        return stored, info

    def _dequantize_rows(self, name: str, stored: dict[str, Tensor], info: dict) -> Tensor:
        q = stored[f"{name}.q"].float()
        w = q * stored[f"{name}.scale"].float().unsqueeze(1)
        if "hi" in info:
            size, hi = info["hi"]["size"], stored[f"{name}.scale_hi"].float().unsqueeze(1)
            for start in info["hi"]["starts"]:
                w[:, start : start + size] = q[:, start : start + size] * hi
        if "lqer" in info:
            factors = {k: stored[f"{name}.lqer_{k}"] for k in ("A", "A_scale", "B", "B_scale")}
            w = w + unpack_factors(factors, info["lqer"])
        return w

    def quantize(self, name: str, tensor: Tensor, export: str) -> tuple[dict[str, Tensor], dict]:
        if name in self.prepared:
            return self.prepared.pop(name)
        if self._integer_export(tensor, export):
            return self._quantize_rows(name, tensor.detach(), export, [])
        if self.cfg.small_matrix_int8 and tensor.is_floating_point() and tensor.ndim == 2 and export == "float16":
            w = tensor.detach().float()
            step = golf.fp16_round(w.abs().amax(1) / 127)
            return {f"{name}.q": round_levels(w, step.unsqueeze(1), 127).to(torch.int8),
                    f"{name}.scale": step.to(torch.float16)}, {"scheme": "int8_absmax_row"}
        if self.cfg.float32_as_float16 and tensor.is_floating_point() and export == "float32":
            return {name: golf.to_float16(name, tensor.detach())}, {"scheme": "float16"}
        return super().quantize(name, tensor, export)

    def dequantize(self, name: str, stored: dict[str, Tensor], info: dict) -> Tensor:
        scheme = info.get("scheme")
        if scheme in ("gptq", "sdclip"):
            return self._dequantize_rows(name, stored, info)
        if scheme == "int8_absmax_row":
            return stored[f"{name}.q"].float() * stored[f"{name}.scale"].float().unsqueeze(1)
        return super().dequantize(name, stored, info)

    def level_spread(self, name: str, export: str, cols: int) -> tuple[float, int]:
        """(steps per row std, max level) of a tensor's grid: L / k (the artifact projection reads it)."""
        top = levels_of(self.cfg.embedding_bits if export == "embedding" else self.cfg.matrix_bits)
        return top / float(self.cfg.clip_sigmas.get(self.role(name, export), self.cfg.default_clip_sigmas)), top

    def row_step(self, weight: Tensor) -> Tensor:
        return sdclip_step(weight, self.cfg.default_clip_sigmas, self.max_level)

    def fake_quantize(self, weight: Tensor) -> Tensor:
        if weight.numel() <= self.float_max_numel:
            return golf.fp16_round(weight.detach().float()).to(weight.dtype)
        step = self.row_step(weight.detach()).unsqueeze(-1)
        return (round_levels(weight.detach().float(), step, self.max_level) * step).to(weight.dtype)


class Gptq(golf.Plugin):
    name = "gptq"
    description = "full-Hessian GPTQ on training-stream calibration, SDClip steps per role, int6/int7/int8, LQER, AWQ-lite (PR #1060/#1394/#1797/#1908)"
    Config = Config

    @golf.hookimpl
    def golf_quantizer(self, config):
        return GptqQuantizer(self.config, config.export.float_max_numel)
