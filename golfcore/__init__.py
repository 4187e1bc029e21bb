"""golf core: a minimal GPT, its training loop, evaluation and artifact, extended through plugins.

This module is the public surface: everything a plugin needs is importable from here, and
built-in plugins import nothing else from golf (a test checks it), so they are examples a third
party can copy. docs/hooks.md lists these names.

    import golfcore as golf

    class Shout(golf.Plugin):
        name = "shout"
        description = "..."
        Config = MyConfig           # a @dataclass deriving from golf.Section, fields made with golf.option
        @golf.hookimpl
        def golf_edit_model(self, description, config, quantizer):
            for layer in description.layers:
                layer.activation = golf.Part(MyActivation)
"""

# the contract: hooks, where a layer sits, what a forward pass and an eval adapter are given
from .contract import IGNORE, Calibration, Compressor, DocumentMode, EvalAdapter, EvalContext, ForwardContext, LayerInfo, Quantizer, Round, pad_rows
from .description import EmbeddingSlots, Head, Layer, ModelDescription, Part, PhysicalLayer, Skips
from .hookspecs import hookimpl

# writing a plugin: its class, its typed config, its parameters, its errors
from .config import RunConfig, Section, option
from .errors import ComplianceError, ConfigError, GolfError
from .layers import LayerSelection
from .params import WeightAverage, declare, float_params, param_specs, spec_of
from .plugins import Plugin

# building blocks plugins reuse
from .artifact import CLIP_PERCENTILE, Int8Quantizer, fp16_round, row_quantiles, to_float16
from .calibration import InputStats
from .data import SpecialTokens
from .model import Block, CausalAttention, Projection, RMSNorm, Rotary, SoftcapHead, Switch, WeightedSkips, rms_norm
from .optim import Muon, Orthogonalization, build_optimizers, zeropower_newton_schulz
from .switch import BatchShape, ModuleSwitch, TrainingSwitch

__all__ = [
    "BatchShape", "Block", "CLIP_PERCENTILE", "Calibration", "CausalAttention", "Compressor", "ComplianceError", "ConfigError",
    "DocumentMode", "EmbeddingSlots", "IGNORE", "EvalAdapter", "EvalContext", "ForwardContext", "GolfError", "Head", "InputStats", "Int8Quantizer", "Layer",
    "LayerInfo", "LayerSelection", "ModelDescription", "ModuleSwitch", "Muon", "Orthogonalization", "Part", "PhysicalLayer", "Plugin",
    "Projection", "Quantizer", "RMSNorm", "Rotary", "Round", "RunConfig", "Section", "Skips", "SoftcapHead", "SpecialTokens", "Switch",
    "TrainingSwitch", "WeightedSkips", "build_optimizers", "declare", "float_params", "fp16_round", "hookimpl", "option",
    "pad_rows", "param_specs", "rms_norm", "row_quantiles", "spec_of", "to_float16", "WeightAverage", "zeropower_newton_schulz",
]
