"""golf.TrainingSwitch: states and schedules checked, the state a schedule gives at a fraction, the
combinations a run can reach, and modules with a bool compile_switch gathered into one switch."""

import pytest
from torch import nn

import golfcore as golf
from golfcore.switch import module_switches, reachable


def test_switch_rejects_bad_states_and_schedules():
    with pytest.raises(ValueError, match="two distinct states"):
        golf.TrainingSwitch("x", (1, 1), print)
    with pytest.raises(ValueError, match="ascending fractions"):
        golf.TrainingSwitch("x", (1, 2, 3), print, at=(0.7, 0.2))
    with pytest.raises(ValueError, match="not one of its states"):
        golf.TrainingSwitch("x", (1, 2), print).set(3)
    assert golf.TrainingSwitch("x", (1, 2, 3), print, at=(0.2, 0.7)).scheduled(0.7) == 3


def test_reachable_combinations_follow_the_fraction_for_scheduled_switches():
    mode = golf.TrainingSwitch("mode", ("a", "b", "c"), print, at=(0.25, 0.5))
    seq = golf.TrainingSwitch("seq_len", (4, 8, 16), print, at=(0.3, 0.6))
    qat = golf.TrainingSwitch("qat", (False, True), print)  # set by its plugin: any time
    assert reachable([mode, qat, seq]) == [
        ("a", False, 4), ("a", True, 4), ("b", False, 4), ("b", True, 4), ("b", False, 8), ("b", True, 8),
        ("c", False, 8), ("c", True, 8), ("c", False, 16), ("c", True, 16)]
    assert reachable([]) == [()]


class Flag(nn.Module):
    def __init__(self):
        super().__init__()
        self.compile_switch = False


def test_compile_switch_modules_become_switches_unless_a_declared_one_drives_them():
    model = nn.Sequential(Flag(), Flag(), nn.ReLU())
    model.switches = nn.ModuleDict({"loop": golf.Switch(), "late": golf.Switch()})  # the layer slots' switches
    declared = [golf.ModuleSwitch("loop", [model.switches["loop"]], at=(0.35,))]
    found = module_switches(model, declared)
    assert [(s.name, len(s.modules)) for s in found] == [("late", 1), ("Flag", 2)]  # "loop" is the declared one's
    (late, flags) = found
    assert flags.states == (False, True) and flags.state is False and not flags.at
    model[0].compile_switch = model[1].compile_switch = True  # flipped by their plugin, not through the switch
    assert flags.state is True
    flags.set(False)
    assert model[0].compile_switch is False and model[1].compile_switch is False
    declared[0].set(declared[0].scheduled(0.5))
    assert model.switches["loop"].compile_switch is True and declared[0].state is True
    assert module_switches(nn.Linear(2, 2), []) == []
