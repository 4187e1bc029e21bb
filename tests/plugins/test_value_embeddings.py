"""value_embeddings: the addition at exactly the listed layers (physical vs virtual under recurrence),
one shared table computed once per forward, the artifact round trip, declarations, training, config."""

import math

import pytest
import safetensors.torch
import torch
from golf_plugins.value_embeddings import (
    CTX_KEY,
    Config,
    ValueEmbeddingAdd,
    ValueEmbeddings,
)
from torch import nn

import golfcore as golf
from golfcore.artifact import Int8Quantizer, pack, unpack
from golfcore.errors import ConfigError
from golfcore.assemble import build_model, check_config
from golfcore.params import ParamSpec, param_specs
from golfcore.plugins import Host, PluginInfo, discover
from golfcore.recipe import resolve
from tests.helpers import tiny_config, train_briefly

SCHEDULE = [0, 1, 2, 1, 2, 3]  # 6 virtual layers over 4 physical ones


class Repeat(golf.Plugin):
    name = "repeat"

    @golf.hookimpl
    def golf_layer_schedule(self, config):
        return SCHEDULE


class Probe(nn.Module):
    """Records v as a value transform at a given order (before or after VE)."""

    def __init__(self, log, order):
        super().__init__()
        self.log, self.order = log, order

    def forward(self, v, ctx):
        self.log.append(v.detach().clone())
        return v


def probe_plugin(name, log, order):
    class P(golf.Plugin):
        @golf.hookimpl
        def golf_edit_model(self, description):
            for layer in description.layers:
                layer.value_transforms.append(golf.Part(Probe, log, order))

    P.name = name
    return P


def make_host(config, ve: Config | None, *extra):
    classes = ([ValueEmbeddings] if ve is not None else []) + list(extra)
    available = {cls.name: PluginInfo(cls.name, cls, "test", "0") for cls in classes}
    for cls in classes:
        config.plugins[cls.name] = ve if cls is ValueEmbeddings else cls.Config()
    return Host(config, available)


def build(ve: Config | None, *extra, config=None):
    config = config or tiny_config()
    host = make_host(config, ve, *extra)
    check_config(config, host)
    return config, host, build_model(config, host, None)


def ve_layers(model):
    return [i for i, b in enumerate(model.blocks) if any(isinstance(t, ValueEmbeddingAdd) for t in b.value_transforms)]


def test_physical_vs_virtual_under_recurrence():
    _, _, model = build(Config(layers=[1]), Repeat)
    assert ve_layers(model) == [1, 3]  # both virtual layers running physical layer 1 (D6 fixed)
    _, _, model = build(Config(layers=[1], index="virtual"), Repeat)
    assert ve_layers(model) == [1]
    _, _, model = build(Config(layers=[4], index="virtual"), Repeat)
    assert ve_layers(model) == [4] and model.blocks[4].layer.physical == 2


def test_addition_by_direct_computation():
    before, after = [], []
    _, _, model = build(Config(layers=[1, 3]), Repeat, probe_plugin("pre", before, -5), probe_plugin("post", after, 5))
    adds = {i: model.blocks[i].value_transforms[1] for i in (1, 3, 5)}  # [pre probe, VE, post probe]
    assert all(isinstance(t, ValueEmbeddingAdd) for t in adds.values())
    with torch.no_grad():
        adds[3].layer_scale.fill_(2.0)  # each virtual layer has its own λ
        adds[5].layer_scale.fill_(-0.5)
    shared = adds[1].shared
    tokens = torch.randint(0, 64, (2, 7))
    model.logits(tokens)
    assert len(before) == len(after) == 6
    ve = (0.1 * shared.table[tokens] @ shared.proj.T).view(2, 7, 2, 8)  # β·W_ve E_ve[t], [B,T,G,D]
    for i in range(6):
        lam = {1: 1.0, 3: 2.0, 5: -0.5}.get(i, 0.0)  # virtual 1, 3 (physical 1) and 5 (physical 3)
        torch.testing.assert_close(after[i] - before[i], lam * ve, atol=1e-6, rtol=1e-5)


def test_one_shared_module_computed_once_per_forward():
    _, _, model = build(Config(layers=[1, 3]), Repeat)
    transforms = [model.blocks[i].value_transforms[0] for i in ve_layers(model)]
    assert len(transforms) == 3 and all(t.shared is transforms[0].shared for t in transforms)
    assert len({id(t.layer_scale) for t in transforms}) == 3
    names = [n for n, _ in model.named_parameters() if ".shared." in n]
    assert names == ["blocks.1.value_transforms.0.shared.table", "blocks.1.value_transforms.0.shared.proj",
                     "blocks.1.value_transforms.0.shared.scale"]
    calls = []
    transforms[0].shared.register_forward_hook(lambda m, args, out: calls.append(out))
    ctxs = []
    model.blocks[5].value_transforms[0].register_forward_pre_hook(lambda m, args: ctxs.append(args[1]))
    model.logits(torch.randint(0, 64, (2, 7)))
    model.logits(torch.randint(0, 64, (2, 7)))
    assert len(calls) == 2  # once per forward, not once per VE layer
    assert ctxs[-1].cache[CTX_KEY] is calls[-1]


def test_init_and_parameter_count_at_full_scale():
    config = tiny_config(vocab_size=1024, num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=3.0)
    _, _, model = build(Config(), config=config)  # layers [9, 10]
    assert ve_layers(model) == [9, 10]
    params = {id(p): p for n, p in model.named_parameters() if ".value_transforms." in n}
    assert sum(p.numel() for p in params.values()) == 163_843
    shared = model.blocks[9].value_transforms[0].shared
    assert shared.table.shape == (1024, 128) and shared.table.std().item() == pytest.approx(0.01, rel=0.05)
    assert shared.proj.shape == (256, 128)
    torch.testing.assert_close(shared.proj.T @ shared.proj, torch.eye(128), atol=1e-5, rtol=0)  # orthogonal (D19)
    assert shared.scale.item() == pytest.approx(0.1)
    assert model.blocks[10].value_transforms[0].layer_scale.item() == 1.0


def test_declared():
    _, _, model = build(Config(layers=[2, 3]))
    specs = {k: v for k, v in param_specs(model).items() if ".value_transforms." in k}
    assert specs == {
        "blocks.2.value_transforms.0.shared.table": ParamSpec("embed", "embedding"),
        "blocks.2.value_transforms.0.shared.proj": ParamSpec("scalar", "float16"),
        "blocks.2.value_transforms.0.shared.scale": ParamSpec("scalar", "float32"),
        "blocks.2.value_transforms.0.layer_scale": ParamSpec("scalar", "float32"),
        "blocks.3.value_transforms.0.layer_scale": ParamSpec("scalar", "float32"),
    }


def test_ordered_before_value_residual():
    assert ValueEmbeddingAdd.order == 0
    log = []
    _, _, model = build(Config(layers=[0]), probe_plugin("vrl", log, 10))
    assert [type(t).__name__ for t in model.blocks[0].value_transforms] == ["ValueEmbeddingAdd", "Probe"]


class Raw:
    name = "raw"

    def compress(self, data):
        return data

    def decompress(self, data):
        return data


def test_artifact_round_trip_stores_the_table_once():
    config, host, model = build(Config(layers=[1, 3]), Repeat)
    with torch.no_grad():
        for layer in model.layers:  # let attention output reach the logits
            nn.init.normal_(layer.o.weight, std=0.05)
    blob = pack(model.state_dict(), param_specs(model), Int8Quantizer(), Raw())
    container = blob[6 + len(b"raw"):]
    stored = safetensors.torch.load(container)
    assert [k for k in stored if ".shared.table" in k] == ["blocks.1.value_transforms.0.shared.table"]
    state = unpack(blob, {"int8": Int8Quantizer()}, {"raw": Raw()})
    assert {k for k in state if k.endswith("shared.table")} == {f"blocks.{i}.value_transforms.0.shared.table" for i in (1, 3, 5)}
    fresh = build_model(config, host, None)  # a second build from the same host, as loading the artifact does
    old_shared = model.blocks[1].value_transforms[0].shared
    new_shared = fresh.blocks[1].value_transforms[0].shared
    assert new_shared is not old_shared and fresh.blocks[5].value_transforms[0].shared is new_shared
    fresh.load_state_dict(state)
    torch.testing.assert_close(new_shared.table, old_shared.table, atol=1e-4, rtol=1e-3)  # stored as fp16
    tokens = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(fresh.logits(tokens), model.logits(tokens), atol=5e-3, rtol=0)


def test_trains_and_learns_the_shared_and_layer_parameters():
    config, host, model = build(Config(layers=[1, 3]), Repeat)
    shared = model.blocks[1].value_transforms[0].shared
    table0 = shared.table.detach().clone()
    outcome = train_briefly(config, host, model)
    assert math.isfinite(outcome.last_train_loss)
    assert not torch.equal(shared.table, table0)
    assert model.blocks[3].value_transforms[0].layer_scale.item() != 1.0


def resolved(table):
    return resolve({"plugins": {"value_embeddings": table}}, discover(), "<test>")


@pytest.mark.parametrize(
    "table, key",
    [({"layers": []}, "layers"), ({"layers": [-1]}, "layers"), ({"layers": [2, 2]}, "layers"),
     ({"index": "logical"}, "index"), ({"dim": 0}, "dim"), ({"layers": "9,10"}, "layers")],
)
def test_bad_config(table, key):
    with pytest.raises(ConfigError, match=rf"\[plugins.value_embeddings\].*{key}"):
        resolved(table)


def test_missing_physical_layer_is_a_config_error():
    config = resolved({})  # default layers [9, 10] on the 9-layer baseline: layer 10 does not exist
    host = Host(config, discover())
    with pytest.raises(ConfigError, match=r"\[plugins.value_embeddings\] layers: \[9, 10\]"):
        check_config(config, host)


def test_missing_virtual_layer_is_a_config_error_at_build():
    with pytest.raises(ConfigError, match=r"\[plugins.value_embeddings\] layers: \[6\].*6 virtual"):
        build(Config(layers=[6], index="virtual"), Repeat)
