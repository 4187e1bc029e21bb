"""Planted violation (calibration, PR #728): a quantizer that calibrates on validation tokens,
loading them through golf's own loader from its `quantize`, and says so in its declaration."""

import golfcore as golf
from golfcore.data import load_val_tokens, resolve_corpus


class ValCalibrated(golf.Int8Quantizer):
    name = "int8"  # the artifact loads with the core's int8 dequantizer

    def __init__(self, config):
        super().__init__(config.export.float_max_numel)
        self.data = config.data
        self.calibration = None

    def quantize(self, name, tensor, export):
        if self.calibration is None:
            tokens = load_val_tokens(resolve_corpus(self.data), 4096)
            self.calibration = golf.Calibration("validation", tokens.numel(), 0.0, in_train_clock=True)
        return super().quantize(name, tensor, export)


class ValCalibratedPlugin(golf.Plugin):
    name = "planted_val_calibrated"
    description = "test plant: calibrates its quantizer on validation tokens"

    @golf.hookimpl
    def golf_quantizer(self, config):
        return ValCalibrated(config)
