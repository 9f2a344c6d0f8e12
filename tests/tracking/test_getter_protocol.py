"""The seams are explicit: every shipped getter and criterion has every member of its Protocol,
with the Protocol's parameters, and no code under src/difftract discovers a hook at run time."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import difftract
from difftract.models.ddtracking.getter import DDTrackingGetter
from difftract.tracking.getter_protocol import Getter, StatelessGetter
from difftract.tracking.getters import (ClosestPeakGetter, DeterministicGetter, PeakGetter, ProbabilisticGetter,
                                        make_getter)
from difftract.tracking.sh_field import SHField
from difftract.tracking.stopping import BinaryCriterion, Criterion, ThresholdCriterion
from difftract.training.dataset import EpochSet
from difftract.training.loop import Task

GETTERS = [DeterministicGetter, ProbabilisticGetter, ClosestPeakGetter, PeakGetter, DDTrackingGetter]
CRITERIA = [BinaryCriterion, ThresholdCriterion]
SRC = Path(difftract.__file__).parent


def _methods(protocol) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(f) for name, f in vars(protocol).items()
            if inspect.isfunction(f) and not name.startswith("_")}


def _annotated(cls) -> set[str]:
    return {name for k in cls.__mro__ for name in vars(k).get("__annotations__", {})}


def test_the_protocols_name_every_hook():
    assert set(_methods(Getter)) == {"to", "seed_directions", "init", "init_backward", "directions",
                                     "bytes_per_seed", "bytes_per_point"}
    assert _annotated(Getter) >= {"name", "cos_max_angle"}
    assert set(_methods(Criterion)) == {"status", "margin", "to"}


@pytest.mark.parametrize("cls", GETTERS, ids=lambda c: c.__name__)
def test_each_shipped_getter_class_satisfies_the_getter_protocol(cls):
    """Checked on the class, statically: a member missing from a rarely used getter fails here."""
    for name, expected in _methods(Getter).items():
        member = inspect.getattr_static(cls, name, None)
        assert inspect.isfunction(member), f"{cls.__name__}.{name} is missing"
        got = inspect.signature(member)
        assert list(got.parameters) == list(expected.parameters), f"{cls.__name__}.{name}{got} != {expected}"
        for p, q in zip(got.parameters.values(), expected.parameters.values()):
            assert (p.default is inspect.Parameter.empty) == (q.default is inspect.Parameter.empty), \
                f"{cls.__name__}.{name}: default of {p.name}"
    assert isinstance(inspect.getattr_static(cls, "name", None), str), f"{cls.__name__} has no class-level name"
    assert "cos_max_angle" in _annotated(cls), f"{cls.__name__} does not declare cos_max_angle"


@pytest.mark.parametrize("cls", CRITERIA, ids=lambda c: c.__name__)
def test_each_shipped_criterion_class_satisfies_the_criterion_protocol(cls):
    for name, expected in _methods(Criterion).items():
        member = inspect.getattr_static(cls, name, None)
        assert inspect.isfunction(member), f"{cls.__name__}.{name} is missing"
        assert list(inspect.signature(member).parameters) == list(expected.parameters)


def test_the_classical_getters_are_stateless_and_start_the_backward_half_like_the_forward_one():
    sh = SHField(np.zeros((3, 3, 3, 15)), legacy=True)
    seeds, dirs = torch.ones(2, 3), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    forward, count = torch.zeros(2, 4, 3), torch.tensor([4, 1])
    generator = torch.Generator().manual_seed(0)
    for method in ("det", "closest", "peak"):
        getter = make_getter(method, sh=sh, peaks=torch.zeros(3, 3, 3, 1, 3), max_angle=30)
        assert isinstance(getter, StatelessGetter) and getter.cos_max_angle == pytest.approx(np.cos(np.pi / 6))
        assert getter.init(seeds, dirs, generator) is None
        assert getter.init_backward(seeds, -dirs, forward, count, generator) is None
        assert getter.bytes_per_point(4) == 0
    prob = make_getter("prob", sh=sh, max_angle=30)
    assert prob.init_backward(seeds, -dirs, forward, count, generator) == {"generator": generator}


def _discoveries(tree: ast.AST, hooks: set[str]) -> list[str]:
    """``hasattr(x, ...)`` and ``getattr(x, ..., default)`` calls that look up a hook, or look anything up
    on a getter or a criterion."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if not (node.func.id == "hasattr" or (node.func.id == "getattr" and len(node.args) == 3)):
            continue
        target, attr = ast.unparse(node.args[0]), node.args[1]
        name = attr.value if isinstance(attr, ast.Constant) else None
        if name in hooks or any(word in target.lower() for word in ("getter", "criterion")):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_hook_is_discovered_at_run_time():
    """The loops call the Protocols' hooks directly; a hasattr/getattr(..., None) probe for one is a regression."""
    hooks = set(_methods(Getter)) | _annotated(Getter) | set(_methods(Criterion))
    hooks |= {"set_epoch", "epoch_record", "collate", "loss"}              # EpochSet and Task
    assert {"set_epoch", "epoch_record"} <= set(_methods(EpochSet)) and {"collate", "loss"} <= set(_methods(Task))
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    found = {str(f.relative_to(SRC)): hits for f in files if (hits := _discoveries(ast.parse(f.read_text()), hooks))}
    assert not found, found


def test_the_discovery_check_catches_the_old_probes():
    """The check above is not vacuous: the probes this seam replaced are caught."""
    old = ('if hasattr(g, "init_backward"):\n    pass\n'
           'cos_max = getattr(self.getter, "cos_max_angle", None)\n'
           'ok = hasattr(criterion, "margin")\n'
           'collate = getattr(self.task, "collate", None)\n')
    assert len(_discoveries(ast.parse(old), {"init_backward", "cos_max_angle", "margin", "collate"})) == 4
    assert _discoveries(ast.parse('x = getattr(args, "cache_dir", None)'), {"margin"}) == []
