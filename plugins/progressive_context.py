"""Progressive context: the training sequence length grows in stages, e.g. 1024 -> 2048 -> 3072
(docs/techniques.md §13.4; PR #2014).

A `golf.TrainingSwitch` on the trainer's `BatchShape.seq_len`: stage i + 1 starts at the first
step whose training fraction (training time over the wallclock cap, else steps over
iterations) reaches `at[i]`. Every step still takes `[train] batch_tokens` tokens from the same stream
position, cut into rows of the current length, so the data order and a checkpoint's loader
position do not depend on the stage. The last length must be `[train] seq_len`, which the
evaluation uses. The compile warm-up runs a step at every length, so no stage recompiles in
the timed run. PR #2014 ran 1024 to 10%, 2048 to 70%, then 3072, and re-warmed the lr over 32
steps after each change (SEQ_CHANGE_WARMUP_STEPS); that re-warm-up is not part of this plugin.

No parameters. Fixes no reference defect.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import golfcore as golf


@dataclass
class Config(golf.Section):
    seq_lens: list[int] = golf.option([1024, 2048, 3072], "training sequence length of each stage; the last is [train] seq_len")
    at: list[float] = golf.option([0.1, 0.7], "training fraction at which each stage after the first starts (ascending, in (0, 1])")

    def check(self) -> None:
        if len(self.seq_lens) < 2 or len(set(self.seq_lens)) != len(self.seq_lens) or min(self.seq_lens) < 1:
            raise self.invalid("seq_lens", f"{self.seq_lens}: needs at least two distinct positive lengths")
        if len(self.at) != len(self.seq_lens) - 1 or any(not 0 < f <= 1 for f in self.at) or self.at != sorted(set(self.at)):
            raise self.invalid("at", f"{self.at}: needs {len(self.seq_lens) - 1} ascending fractions in (0, 1], one per stage after the first")


class ProgressiveContext(golf.Plugin):
    name = "progressive_context"
    description = "training sequence length grows in stages at training fractions, e.g. 1k->2k->3k (PR #2014)"
    Config = Config

    @golf.hookimpl
    def golf_check_config(self, config):
        t = config.train
        if self.config.seq_lens[-1] != t.seq_len:
            raise golf.ConfigError(f"[plugins.progressive_context] seq_lens: the last stage {self.config.seq_lens[-1]} "
                                   f"must be [train] seq_len {t.seq_len}")
        split = [s for s in self.config.seq_lens if t.batch_tokens % (t.micro_batches * s)]
        if split:
            raise golf.ConfigError(f"[plugins.progressive_context] seq_lens: [train] batch_tokens {t.batch_tokens} is not a "
                                   f"multiple of micro_batches {t.micro_batches} x {split[0]}")

    @golf.hookimpl
    def golf_switches(self, model, config, shape):
        return golf.TrainingSwitch("seq_len", self.config.seq_lens, functools.partial(setattr, shape, "seq_len"), self.config.at)
