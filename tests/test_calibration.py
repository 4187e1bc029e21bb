"""Calibration: input second moments per projection weight, from forward pre-hooks on a toy module tree."""

import torch
from torch import nn

from golfcore.calibration import calibrate, collect_input_stats, projections


class Toy(nn.Module):
    """An embedding, a projection used twice (a shared layer), and a tied head module."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.shared = nn.Linear(4, 4, bias=False)
        self.shared.role = "mix"
        self.up = nn.Linear(4, 6, bias=False)
        self.head = nn.Linear(6, 10, bias=False)

    def forward(self, tokens):
        x = self.emb(tokens)
        a = self.shared(x)
        b = self.shared(a)
        return self.head(self.up(b).relu())


def test_stats_are_mean_outer_products_over_every_use():
    torch.manual_seed(0)
    model = Toy()
    batches = [torch.randint(0, 10, (2, 5)) for _ in range(3)]
    stats = collect_input_stats(model, batches, model)
    assert set(stats) == {"shared.weight", "up.weight", "head.weight"}  # the embedding's input is tokens: skipped
    with torch.no_grad():
        xs = [model.emb(t).reshape(-1, 4) for t in batches]
        a = [model.shared(x) for x in xs]
        uses = torch.cat(xs + a)  # both calls of the shared layer
        b = [model.shared(y) for y in a]
    s = stats["shared.weight"]
    assert s.rows == 2 * 3 * 10 and s.role == "mix"
    assert torch.allclose(s.hessian, uses.T @ uses / uses.size(0), atol=1e-6)
    up_in = torch.cat(b)
    assert torch.allclose(stats["up.weight"].hessian, up_in.T @ up_in / up_in.size(0), atol=1e-6)
    assert torch.allclose(stats["up.weight"].channel_rms, up_in.square().mean(0).sqrt(), atol=1e-6)
    assert stats["up.weight"].role is None
    # hooks are gone afterwards
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_a_weight_tied_to_the_embedding_is_found_under_its_first_name():
    model = Toy()
    model.head = nn.Linear(4, 10, bias=False)
    model.head.weight = model.emb.weight  # [10, 4]: tied
    assert "emb.weight" in projections(model) and "head.weight" not in projections(model)


class TiedHead(nn.Module):
    """A head handed the table as an argument, as GPT.head calls logit_head(h, tok_emb.weight)."""

    def forward(self, h, table):
        return h @ table.T


def test_a_tied_head_gives_the_embedding_the_final_states_as_inputs():
    torch.manual_seed(0)
    model = Toy()
    model.tied = TiedHead()
    model.up = nn.Linear(4, 4, bias=False)
    forward = lambda t: model.tied(model.up(model.emb(t)), model.emb.weight)  # noqa: E731
    batches = [torch.randint(0, 10, (2, 5)) for _ in range(2)]
    stats = collect_input_stats(model, batches, forward)
    with torch.no_grad():
        h = torch.cat([model.up(model.emb(t)).reshape(-1, 4) for t in batches])  # the head's inputs [20, 4]
    assert stats["emb.weight"].rows == 20
    assert torch.allclose(stats["emb.weight"].hessian, h.T @ h / 20, atol=1e-6)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_the_gpt_embedding_gets_the_final_hidden_states():
    from tests.helpers import build

    torch.manual_seed(0)
    _, _, model = build()
    tokens = torch.randint(0, 64, (2, 16))
    stats = collect_input_stats(model, [tokens], model.logits)
    with torch.no_grad():
        h = model.hidden(tokens).reshape(-1, 32)  # [32, d]: what the tied head multiplies by the table
    assert stats["tok_emb.weight"].rows == 32
    assert torch.allclose(stats["tok_emb.weight"].hessian, h.T @ h / 32, atol=1e-5)


def test_calibrate_asks_only_quantizers_that_want_it():
    class Wants:
        calibration_batches = 2

        def calibrate(self, stats):
            self.stats = stats

    model, fed = Toy(), []

    def next_batch():
        fed.append(torch.randint(0, 10, (1, 4)))
        return fed[-1]

    quantizer = Wants()
    record = calibrate(quantizer, model, next_batch, model)
    assert record.source == "train" and record.batches == 2 and record.tokens == 8 and record.weights == 3 and len(fed) == 2
    assert record.in_train_clock and quantizer.calibration is record  # what the compliance record reads
    assert calibrate(object(), model, next_batch, model) is None and len(fed) == 2
