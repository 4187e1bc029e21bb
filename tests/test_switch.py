"""golf.Switch: states and schedules checked, the state a schedule gives at a fraction, the
combinations a run can reach, and modules with a bool compile_switch gathered into one switch."""

import pytest
from torch import nn

import golfcore as golf
from golfcore.switch import module_switches, reachable


def test_switch_rejects_bad_states_and_schedules():
    with pytest.raises(ValueError, match="two distinct states"):
        golf.Switch("x", (1, 1), print)
    with pytest.raises(ValueError, match="ascending fractions"):
        golf.Switch("x", (1, 2, 3), print, at=(0.7, 0.2))
    with pytest.raises(ValueError, match="not one of its states"):
        golf.Switch("x", (1, 2), print).set(3)
    assert golf.Switch("x", (1, 2, 3), print, at=(0.2, 0.7)).scheduled(0.7) == 3


def test_reachable_combinations_follow_the_fraction_for_scheduled_switches():
    mode = golf.Switch("mode", ("a", "b", "c"), print, at=(0.25, 0.5))
    seq = golf.Switch("seq_len", (4, 8, 16), print, at=(0.3, 0.6))
    qat = golf.Switch("qat", (False, True), print)  # set by its plugin: any time
    assert reachable([mode, qat, seq]) == [
        ("a", False, 4), ("a", True, 4), ("b", False, 4), ("b", True, 4), ("b", False, 8), ("b", True, 8),
        ("c", False, 8), ("c", True, 8), ("c", False, 16), ("c", True, 16)]
    assert reachable([]) == [()]


def test_bool_compile_switch_modules_form_one_switch_whose_state_is_theirs():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.ReLU())
    assert module_switches(model) is None
    model[0].compile_switch = model[1].compile_switch = False
    switch = module_switches(model)
    assert switch.name == "compile_switch" and switch.states == (False, True) and switch.state is False
    model[0].compile_switch = model[1].compile_switch = True  # flipped by their plugin, not through the switch
    assert switch.state is True
    switch.set(False)
    assert model[0].compile_switch is False and model[1].compile_switch is False
