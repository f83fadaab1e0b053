"""The contract every stage plugin passes.

Call :func:`check_stage_contract` from a plugin's test with a factory for a
small stage, a previous output (``None`` for first stages) and a conditioning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from cdm3d.core import Conditioning, Stage, load_stage, save_stage
from cdm3d.errors import Cdm3dError


def tensors_of(output: Any) -> dict[str, torch.Tensor]:
    """The tensors of a stage output (a dataclass of tensors)."""
    assert dataclasses.is_dataclass(output), f"stage outputs must be dataclasses, got {type(output)}"
    found = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    return {k: v for k, v in found.items() if isinstance(v, torch.Tensor)}


def assert_same_output(a: Any, b: Any) -> None:
    ta, tb = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0, msg=f"field {key} differs")


def _sample(stage: Stage, prev: Any, cond: Conditioning, seed: int, sampling: Any = None) -> Any:
    return stage.sample(prev, cond, generator=torch.Generator().manual_seed(seed), sampling=sampling)


def check_stage_contract(
    make_stage: Callable[[], Stage],
    prev: Any,
    cond: Conditioning,
    tmp_path: Path,
    expected_shapes: dict[str, tuple[int, ...]],
    bad_prevs: list[Any] = (),
    sampling: dict[str, Any] | None = None,
) -> None:
    """Assert the stage contract.

    Args:
        make_stage: builds a fresh small stage.
        prev: a valid previous output (``None`` for a first stage).
        cond: a valid conditioning for ``prev``'s batch.
        expected_shapes: field name -> shape of the output's tensors.
        bad_prevs: invalid previous outputs that must raise a cdm3d error.
        sampling: sampling settings keeping the test fast.
    """
    stage = make_stage().eval()

    # 1. shapes and dtypes
    out = _sample(stage, prev, cond, 0, sampling)
    tensors = tensors_of(out)
    for name, shape in expected_shapes.items():
        assert name in tensors, f"output lacks field {name}"
        assert tuple(tensors[name].shape) == shape, f"{name}: {tuple(tensors[name].shape)} != {shape}"
        assert tensors[name].dtype == torch.float32, f"{name} is {tensors[name].dtype}"
        assert torch.isfinite(tensors[name]).all(), f"{name} holds non-finite values"

    # 2. seed determinism: same seed, same sample; another seed, another sample
    assert_same_output(out, _sample(stage, prev, cond, 0, sampling))
    other = tensors_of(_sample(stage, prev, cond, 1, sampling))
    assert any(not torch.equal(other[k], tensors[k]) for k in tensors), "a new seed gave the same sample"

    # 3. identical samples after a save/load round trip
    path = tmp_path / f"{stage.config.type}.safetensors"
    save_stage(stage, path)
    reloaded = load_stage(path, expected_type=stage.config.type)
    assert_same_output(out, _sample(reloaded, prev, cond, 0, sampling))

    # 4. bad input raises cdm3d errors
    wrong_dim = Conditioning({"text": torch.zeros(cond.batch_size, cond.dim + 1)}, {"text": torch.zeros(cond.dim + 1)})
    for bad_prev in [object(), *bad_prevs] + ([] if prev is None else [None]):
        with pytest.raises(Cdm3dError):
            _sample(stage, bad_prev, cond, 0, sampling)
    with pytest.raises(Cdm3dError):
        _sample(stage, prev, wrong_dim, 0, sampling)
    with pytest.raises(Cdm3dError):
        _sample(stage, prev, cond, 0, {**(sampling or {}), "steps": 0})
    with pytest.raises(Cdm3dError):
        _sample(stage, prev, cond, 0, {**(sampling or {}), "no_such_setting": 1})
    with pytest.raises(Cdm3dError):
        _sample(stage, prev, "a prompt is not a Conditioning", 0, sampling)
