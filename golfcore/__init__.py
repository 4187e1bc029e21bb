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
        def golf_mlp_activation(self, config, layer): ...
"""

# the contract: hooks, where a layer sits, what a forward pass and an eval adapter are given
from .contract import Compressor, EvalAdapter, EvalContext, ForwardContext, LayerInfo, Quantizer
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
from .data import BOS_ID
from .model import Rotary, rms_norm

__all__ = [
    "BOS_ID", "CLIP_PERCENTILE", "Compressor", "ComplianceError", "ConfigError", "EvalAdapter", "EvalContext",
    "ForwardContext", "GolfError", "InputStats", "Int8Quantizer", "LayerInfo", "LayerSelection", "Plugin", "Quantizer", "Rotary",
    "RunConfig", "Section", "declare", "float_params", "fp16_round", "hookimpl", "option", "param_specs", "rms_norm",
    "row_quantiles", "spec_of", "to_float16", "WeightAverage",
]
