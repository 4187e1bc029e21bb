"""Every hook in golfcore.hookspecs, exercised by a small throwaway plugin."""

import inspect

import pytest
import sentencepiece as spm
import torch
from torch import nn

import golfcore as golf
from golfcore import hookspecs
from golfcore.errors import ConfigError
from golfcore.train import Trainer
from golf_cli.scaffold import hook_specs
from tests.helpers import CPU, FINEWEB_TOKENIZER, build, synthetic_loader, tiny_config

EXERCISED = set()


def exercise(fn):
    EXERCISED.add(fn.__name__.removeprefix("test_"))
    return fn


def train(config, host, model, records=None):
    trainer = Trainer(config, model, host, None, synthetic_loader(config), CPU, None, (records or []).append)
    return trainer.run()


@exercise
def test_golf_check_config():
    class Picky(golf.Plugin):
        name = "picky"

        @golf.hookimpl
        def golf_check_config(self, config):
            if config.model.num_layers < 8:
                raise ConfigError("[plugins.picky] needs at least 8 layers")

    with pytest.raises(ConfigError, match="picky"):
        build(Picky)


@exercise
def test_golf_layer_schedule():
    class Repeat(golf.Plugin):
        name = "repeat"

        @golf.hookimpl
        def golf_layer_schedule(self, config):
            return [0, 1, 2, 1, 2, 3]

    _, _, model = build(Repeat)
    assert len(model.blocks) == 6 and len(model.layers) == 4
    assert [b.layer.physical for b in model.blocks] == [0, 1, 2, 1, 2, 3]
    # each virtual layer owns its scalars; matrices are shared
    assert model.blocks[1].attn_scale is not model.blocks[3].attn_scale


class AddOne(nn.Module):
    def forward(self, tokens):
        return torch.ones(*tokens.shape, 32)


class Recorder(nn.Module):
    def __init__(self, log, tag, order=0):
        super().__init__()
        self.log, self.tag, self.order = log, tag, order

    def forward(self, x, *rest):
        self.log.append((self.tag, tuple(x.shape), [type(r).__name__ for r in rest]))
        return x


def editor(name, edit):
    """A plugin whose golf_edit_model calls edit(description)."""

    class P(golf.Plugin):
        @golf.hookimpl
        def golf_edit_model(self, description, config, quantizer):
            edit(description)

    P.name = name
    return P


@exercise
def test_golf_edit_model():
    log = []

    def edit(d):
        d.embedding.additions.append(golf.Part(AddOne))
        d.embedding.transforms.append(golf.Part(Recorder, log, "embed"))
        for layer in d.layers:
            layer.value_transforms.append(golf.Part(Recorder, log, ("v", layer.info.virtual)))
            layer.output_transforms.append(golf.Part(Recorder, log, ("y", layer.info.virtual)))
            layer.activation = golf.Part(nn.Tanh)
            layer.rotary = golf.Part(nn.Identity)

    _, _, plain = build()
    _, _, model = build(editor("edits", edit))
    tokens = torch.randint(0, 64, (2, 5))
    assert not torch.allclose(model.logits(tokens), plain.logits(tokens))
    assert log[0] == ("embed", (2, 5, 32), ["Tensor"])
    assert log[1:3] == [(("v", 0), (2, 5, 2, 8), ["ForwardContext"]), (("y", 0), (2, 5, 4, 8), ["Tensor", "Tensor", "ForwardContext"])]
    assert len(log) == 1 + 2 * 4
    assert all(isinstance(b.activation, nn.Tanh) and isinstance(b.rotary, nn.Identity) for b in model.blocks)


def test_edits_run_in_recipe_order_and_lists_in_module_order():
    log = []

    def add(tag, order):
        def edit(d):
            for layer in d.layers:
                layer.output_transforms.append(golf.Part(Recorder, log, tag, order))
        return edit

    _, _, model = build(editor("gate", add("gate", 10)), editor("xsa", add("xsa", 0)))
    model.logits(torch.randint(0, 64, (1, 3)))
    assert [tag for tag, _, _ in log[:2]] == ["xsa", "gate"]


def test_input_scales_multiply():
    def scale(factor):
        def edit(d):
            for layer in d.layers:
                layer.input_scale *= factor / (layer.info.virtual + 1)
        return edit

    _, _, model = build(editor("half", scale(0.5)), editor("third", scale(1 / 3)))
    assert model.blocks[1].input_scale == pytest.approx((0.5 / 2) * (1 / 3 / 2))


def test_weight_transform_applies_to_every_projection():
    seen = []

    class Count(nn.Module):
        def forward(self, w):
            seen.append(tuple(w.shape))
            return w

    def edit(d):
        d.weight_transform = golf.Part(Count)

    _, _, model = build(editor("fake", edit))
    model.logits(torch.randint(0, 64, (1, 3)))
    assert len(seen) == 6 * 4  # q k v o up down, per block
    assert (64, 32) in seen and (32, 64) in seen
    transforms = {id(m.transform) for m in model.modules() if isinstance(m, golf.Projection)}
    assert len(transforms) == 1  # one module, shared


def test_a_part_given_twice_is_built_once_and_shared():
    class Table(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = golf.declare(nn.Parameter(torch.zeros(3)), "scalar", "float32")

    class Uses(nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = table

        def forward(self, v, ctx):
            return v

    def edit(d):
        table = golf.Part(Table)
        d.layers[0].value_transforms.append(golf.Part(Uses, table))
        d.layers[3].value_transforms.append(golf.Part(Uses, table))

    _, _, model = build(editor("shared", edit))
    assert model.blocks[0].value_transforms[0].table is model.blocks[3].value_transforms[0].table
    _, _, again = build(editor("shared", edit))
    assert again.blocks[0].value_transforms[0].table is not model.blocks[0].value_transforms[0].table  # builds are pure


def test_every_hook_declares_its_phase():
    for name in hook_specs():
        assert hookspecs.phase_of(name) in hookspecs.PHASES, name
    assert hookspecs.hooks_in("build") == ("golf_layer_schedule", "golf_edit_model", "golf_model_built")
    assert set(hookspecs.hooks_in("eval")) == {"golf_before_eval", "golf_eval_adapter"}


@exercise
def test_golf_model_built():
    class Ortho(golf.Plugin):
        name = "ortho"

        @golf.hookimpl
        def golf_model_built(self, model, config):
            with torch.no_grad():
                for layer in model.layers:
                    nn.init.orthogonal_(layer.o.weight)

    _, _, model = build(Ortho)
    o = model.layers[0].o.weight
    assert torch.allclose(o @ o.T, torch.eye(32), atol=1e-5)


@exercise
def test_golf_optimizers():
    class Sgd(golf.Plugin):
        name = "sgd"

        @golf.hookimpl
        def golf_optimizers(self, model, config):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for group in opt.param_groups:
                group["base_lr"] = 0.1
            return [opt]

    config, host, model = build(Sgd)
    trainer = Trainer(config, model, host, None, synthetic_loader(config), CPU, None, lambda r: None)
    assert isinstance(trainer.optimizers[0], torch.optim.SGD)
    trainer.run()


@exercise
def test_golf_orthogonalization():
    class CubicNewtonSchulz(golf.Plugin):
        name = "cubic_ns"

        @golf.hookimpl
        def golf_orthogonalization(self, config, orthogonalization):
            orthogonalization.coefficients = ((1.5, -0.5, 0.0),)
            orthogonalization.normalize = "columns"

    config, host, model = build(CubicNewtonSchulz)
    trainer = Trainer(config, model, host, None, synthetic_loader(config), CPU, None, lambda r: None)
    muon = trainer.optimizers[0]
    assert isinstance(muon, golf.Muon) and muon.orthogonalization == golf.Orthogonalization(((1.5, -0.5, 0.0),), "columns")
    trainer.run()


@exercise
def test_golf_switches():
    seen = []

    class HalfLength(golf.Plugin):
        name = "half_length"

        @golf.hookimpl
        def golf_switches(self, model, config, shape):
            return golf.TrainingSwitch("seq_len", (8, 16), lambda n: setattr(shape, "seq_len", n), at=(0.5,))

        @golf.hookimpl
        def golf_step_end(self, model, step, lr_scale):
            seen.append(trainer.shape.seq_len)

    config, host, model = build(HalfLength)
    config.train.iterations = 4
    trainer = Trainer(config, model, host, None, synthetic_loader(config), CPU, None, lambda r: None)
    trainer.run()
    assert seen == [8, 8, 16, 16]


@exercise
def test_golf_loss_penalty():
    calls = []

    class Penalty(golf.Plugin):
        name = "penalty"

        @golf.hookimpl
        def golf_loss_penalty(self, model, config, quantizer):
            def penalty(lr_scale):
                calls.append(lr_scale)
                return (model.skips.weights - 5.0).square().sum()

            return penalty

    config, host, model = build(Penalty)
    train(config, host, model)
    assert len(calls) == config.train.iterations * config.train.micro_batches
    assert torch.all(model.skips.weights > 1.0)  # pulled from their init of 1 towards 5


@exercise
def test_golf_step_end():
    steps = []

    class Watch(golf.Plugin):
        name = "watch"

        @golf.hookimpl
        def golf_step_end(self, model, step, lr_scale):
            steps.append((step, lr_scale))

    config = tiny_config()
    config.train.warmup_steps, config.train.iterations, config.train.warmdown_iters = 2, 4, 2
    config, host, model = build(Watch, config=config)
    train(config, host, model)
    assert steps == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5)]  # not called in warm-up; scale used by that step


@exercise
def test_golf_train_end():
    class Zero(golf.Plugin):
        name = "zero"

        @golf.hookimpl
        def golf_train_end(self, model):
            with torch.no_grad():
                model.skips.weights.zero_()

    config, host, model = build(Zero)
    train(config, host, model)
    assert torch.all(model.skips.weights == 0)


@exercise
def test_golf_quantizer():
    from golfcore.artifact import Int8Quantizer

    class Coarse(Int8Quantizer):
        name = "coarse"

    class P(golf.Plugin):
        name = "coarse_export"

        @golf.hookimpl
        def golf_quantizer(self, config):
            return Coarse()

    config, host, _ = build(P)
    assert host.first("golf_quantizer", config=config).name == "coarse"


@exercise
def test_golf_compressor():
    class Raw:
        name = "raw"

        def compress(self, data):
            return data

        def decompress(self, data):
            return data

    class P(golf.Plugin):
        name = "raw_export"

        @golf.hookimpl
        def golf_compressor(self, config):
            return Raw()

    from golfcore.artifact import Int8Quantizer, pack, unpack
    from golfcore.params import param_specs

    config, host, model = build(P)
    compressor = host.first("golf_compressor", config=config)
    blob = pack(model.state_dict(), param_specs(model), Int8Quantizer(), compressor)
    state = unpack(blob, {"int8": Int8Quantizer()}, {"raw": compressor})
    assert set(state) == set(model.state_dict())


@exercise
def test_golf_before_eval():
    class Untie(golf.Plugin):
        name = "untie"

        @golf.hookimpl
        def golf_before_eval(self, model, config):
            model.v2p = list(reversed(model.v2p))

    config, host, model = build(Untie)
    host.call("golf_before_eval", model=model, config=config)
    assert model.v2p == [3, 2, 1, 0]


@exercise
def test_golf_eval_adapter():
    from golfcore.eval import build_byte_luts, evaluate

    class Uniformish:
        name, history_len, order = "mix_uniform", 1, 0

        def start(self, model, ctx):
            self.vocab_size = ctx.vocab_size

        def adjust(self, logprobs, history, positions):
            uniform = torch.full_like(logprobs, -torch.log(torch.tensor(float(self.vocab_size))))
            return torch.logaddexp(logprobs + torch.log(torch.tensor(0.5)), uniform + torch.log(torch.tensor(0.5)))

        def observe(self, tokens):
            pass

    class P(golf.Plugin):
        name = "mixu"

        @golf.hookimpl
        def golf_eval_adapter(self, config):
            return Uniformish()

    config, host, model = build(P)
    adapters = host.collect("golf_eval_adapter", config=config)
    assert [a.name for a in adapters] == ["mix_uniform"]
    adapters[0].start(model, golf.EvalContext.local(config.model.vocab_size, 199))
    sp = spm.SentencePieceProcessor(model_file=str(FINEWEB_TOKENIZER))
    luts = build_byte_luts(sp, config.model.vocab_size)
    tokens = torch.randint(2, 64, (200,))
    plain = evaluate(model.logprobs, tokens, luts, seq_len=16, stride=16, batch_seqs=4)
    mixed = evaluate(model.logprobs, tokens, luts, seq_len=16, stride=16, batch_seqs=4, adapters=adapters, chunk_tokens=50)
    assert mixed.targets == plain.targets == 199
    # half the mass moved to uniform: every target's probability changes, but stays a distribution
    assert mixed.val_loss != pytest.approx(plain.val_loss)
    assert mixed.checks["adapters"] == ["mix_uniform"]


def test_every_hookspec_is_exercised():
    specs = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("golf_")}
    assert specs == EXERCISED
