"""bigram_hash: buckets by hand (BOS in the middle), init, the addition, declarations, training, config."""

import math

import pytest
import torch
from golf_plugins.bigram_hash import BigramHash, BigramHashPlugin, bigram_buckets

from golfcore.errors import ConfigError
from golfcore.model import rms_norm
from golfcore.params import ParamSpec, param_specs
from golfcore.plugins import discover
from golfcore.recipe import resolve
from tests.helpers import build, built, edited, train_briefly

M = 2048


def h(cur, prev):
    return ((36313 * cur) ^ (27191 * prev)) % (M - 1)


def test_buckets_by_hand_with_a_bos_in_the_middle():
    #            doc A ...  | doc B: BOS  9   3
    tokens = torch.tensor([[5, 7, 1, 9, 3]])
    masked = bigram_buckets(tokens, M, cross_documents=False)
    assert masked.tolist() == [[M - 1, h(7, 5), M - 1, h(9, 1), h(3, 9)]]
    reference = bigram_buckets(tokens, M, cross_documents=True)
    assert reference.tolist() == [[M - 1, h(7, 5), h(1, 7), h(9, 1), h(3, 9)]]
    assert h(1, 7) != M - 1  # the reference really does hash across the boundary here


def test_buckets_stay_in_range_for_large_ids():
    tokens = torch.randint(0, 60000, (3, 50))
    b = bigram_buckets(tokens, M, cross_documents=False)
    assert b.dtype == torch.int64 and b.min() >= 0 and b.max() <= M - 1
    expected = [[M - 1] + [h(c, p) if c != 1 else M - 1 for p, c in zip(row, row[1:])] for row in tokens.tolist()]
    assert b.tolist() == expected


def test_init_at_full_scale_and_parameter_count():
    module = BigramHash(M, 128, 512, 0.05, False)
    assert module.table.shape == (M, 128) and torch.all(module.table == 0)
    assert module.proj.shape == (512, 128)
    torch.testing.assert_close(module.proj.T @ module.proj, torch.eye(128), atol=1e-5, rtol=0)  # orthogonal (D19)
    assert module.scale.item() == pytest.approx(0.05)
    assert sum(p.numel() for p in module.parameters()) == 327_681


def test_output_formula():
    module = BigramHash(M, 16, 32, 0.05, False)
    with torch.no_grad():
        module.table.normal_()
    tokens = torch.tensor([[5, 7, 1, 9, 3], [1, 2, 3, 1, 4]])
    expected = 0.05 * module.table[bigram_buckets(tokens, M, False)] @ module.proj.T
    torch.testing.assert_close(module(tokens), expected)
    # a position's output depends only on its own bucket: the BOS rows equal the reserved row
    torch.testing.assert_close(module(tokens)[0, 2], 0.05 * module.proj @ module.table[M - 1])


def test_added_before_the_embedding_norm():
    _, _, model = build(BigramHashPlugin)
    (addition,) = model.embedding_additions
    assert isinstance(addition, BigramHash)
    tokens = torch.randint(0, 64, (2, 7))
    before = model.logits(tokens)
    torch.testing.assert_close(before, model.logits(tokens))
    with torch.no_grad():
        addition.table.normal_()  # E_b starts at zero: the addition is then exactly zero
    after = model.logits(tokens)
    assert not torch.allclose(before, after)
    # what reaches the blocks is rms_norm(E_tok[t] + bigram(t)): check it against a direct computation
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x0=args[1]))
    model.logits(tokens)
    torch.testing.assert_close(seen["x0"], rms_norm(model.tok_emb(tokens) + addition(tokens)))


def test_declared_groups_and_exports():
    _, _, model = build(BigramHashPlugin)
    specs = {k: v for k, v in param_specs(model).items() if k.startswith("embedding_additions.")}
    assert specs == {
        "embedding_additions.0.table": ParamSpec("embed", "embedding"),
        "embedding_additions.0.proj": ParamSpec("scalar", "float16"),
        "embedding_additions.0.scale": ParamSpec("scalar", "float32"),
    }


def test_trains_and_learns_the_table():
    config, host, model = build(BigramHashPlugin)
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)
    assert model.embedding_additions[0].table.abs().sum() > 0  # E_b moved off zero: W_p passes gradient


@pytest.mark.parametrize(
    "table, key",
    [({"buckets": 1}, "buckets"), ({"dim": 0}, "dim"), ({"cross_documents": "yes"}, "cross_documents"), ({"bucket": 3}, "bucket")],
)
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.bigram_hash\].*{key}"):
        resolve({"plugins": {"bigram_hash": table}}, discover(), "<test>")


def test_cross_documents_option_reaches_the_module():
    config = resolve({"plugins": {"bigram_hash": {"cross_documents": True, "buckets": 64}}}, discover(), "<test>")
    config.model.model_dim = 32
    module = built(edited(BigramHashPlugin(config.plugins["bigram_hash"]), config).embedding.additions[0])
    assert module.cross_documents and module.table.shape == (64, 128)
