"""Config and checkpoint errors: each a cdm3d error that names what was wrong."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml
from toy_signals import ToyCoarseStage, ToyUpsampleStage  # noqa: F401  (registers the toy stages)

from cdm3d.core import Cascade, build_stage, load_stage, save_stage
from cdm3d.core.registry import Registry
from cdm3d.errors import CheckpointError, ConfigError


def _coarse(**extra):
    return build_stage({"type": "toy.coarse", **extra})


def test_unknown_stage_type_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown stage type 'toy\.nope'.*toy\.coarse"):
        build_stage({"type": "toy.nope"})


def test_missing_type_field() -> None:
    with pytest.raises(ConfigError, match="'type'"):
        build_stage({"embed_dim": 16})


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"no_such_field": 1}, "unknown field 'no_such_field'"),
        ({"network": {"hiden": 3}}, "unknown field 'network.hiden'"),
        ({"embed_dim": "sixteen"}, "field 'embed_dim'"),
        ({"embed_dim": 16.5}, "field 'embed_dim'"),
        ({"sampling": {"steps": "20"}}, "field 'sampling.steps'"),
        ({"sampling": {"steps": 0}}, "field 'sampling.steps'"),
        ({"sampling": {"scheduler": "warp-drive"}}, "field 'sampling.scheduler'"),
        ({"sampling": {"check_finite": "yes"}}, "field 'sampling.check_finite'"),
        ({"diffusion": {"cond_drop_prob": 1.5}}, "field 'diffusion.cond_drop_prob'"),
        ({"cond_keys": []}, "cond_keys"),
    ],
)
def test_wrong_fields_are_errors_naming_the_field(extra, field) -> None:
    with pytest.raises(ConfigError) as info:
        _coarse(**extra)
    assert field in str(info.value)


def test_augmentation_on_a_first_stage_is_refused() -> None:
    with pytest.raises(Exception, match="no conditioning input"):
        _coarse(diffusion={"augmentation": {"max_level": 0.3}})


def test_stage_weights_round_trip_with_config_inside(tmp_path) -> None:
    stage = _coarse(network={"hidden": 32})
    path = tmp_path / "c.safetensors"
    save_stage(stage, path)
    loaded = load_stage(path)
    assert loaded.config == stage.config
    for k, v in stage.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_saving_the_same_weights_twice_gives_the_same_bytes(tmp_path) -> None:
    from safetensors.torch import load_file

    from cdm3d.core.checkpoint import read_metadata, save_tensors

    tensors = {f"w{i}": torch.full((3, i + 1), float(i)) for i in range(8)}
    meta = {f"key.{c}": c * 3 for c in "abcdefgh"}  # a hash map's order: 8! ways to differ
    blobs = []
    for i in range(4):
        path = tmp_path / f"w{i}.safetensors"
        save_tensors(path, tensors, meta)
        blobs.append(path.read_bytes())
    assert all(b == blobs[0] for b in blobs)
    header_len = int.from_bytes(blobs[0][:8], "little")
    assert header_len % 8 == 0
    back = load_file(tmp_path / "w0.safetensors")
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert {k: v for k, v in read_metadata(tmp_path / "w0.safetensors").items() if k in meta} == meta


def test_missing_weights_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_stage(tmp_path / "nope.safetensors")


def test_weights_of_another_stage_type_are_refused(tmp_path) -> None:
    path = tmp_path / "up.safetensors"
    save_stage(build_stage({"type": "toy.upsample"}), path)
    with pytest.raises(CheckpointError, match=r"toy\.upsample.*expected 'toy\.coarse'"):
        load_stage(path, expected_type="toy.coarse")


def test_weights_of_another_shape_are_refused(tmp_path) -> None:
    from cdm3d.core.checkpoint import load_state_into

    path = tmp_path / "small.safetensors"
    save_stage(_coarse(network={"hidden": 32}), path)
    big = _coarse(network={"hidden": 64})
    from cdm3d.core.checkpoint import load_tensors

    tensors, _ = load_tensors(path)
    with pytest.raises(CheckpointError, match="mismatched shapes"):
        load_state_into(big, tensors, path)


def test_a_pickle_offered_as_weights_is_refused_without_unpickling(tmp_path) -> None:
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    for name, writer in {
        "torch.pt": lambda p: torch.save({"w": torch.zeros(2)}, p),
        "raw.pkl": lambda p: p.write_bytes(pickle.dumps(Boom(), protocol=4)),
    }.items():
        path = tmp_path / name
        writer(path)
        with pytest.raises(CheckpointError, match="never unpickles"):
            load_stage(path)


def test_truncated_and_garbage_weights_are_refused(tmp_path) -> None:
    good = tmp_path / "good.safetensors"
    save_stage(_coarse(), good)
    data = good.read_bytes()
    for name, content in {"trunc": data[: len(data) // 2], "empty": b"", "text": b"hello world, not weights"}.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError):
            load_stage(path)


def test_safetensors_without_cdm3d_metadata_is_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not a cdm3d stage weights file"):
        load_stage(path)


def test_cascade_folder_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Cascade.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no cascade.yaml"):
        Cascade.from_pretrained(tmp_path / "empty")
    cascade = Cascade([("coarse", _coarse()), ("upsample", build_stage({"type": "toy.upsample"}))])
    folder = cascade.save_pretrained(tmp_path / "c")
    with pytest.raises(Exception, match="exists"):
        cascade.save_pretrained(folder)
    cascade.save_pretrained(folder, overwrite=True)
    (folder / "upsample.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"upsample\.safetensors"):
        Cascade.from_pretrained(folder)
    doc = yaml.safe_load((folder / "cascade.yaml").read_text())
    doc["stages"][1]["weights"] = "../../etc/passwd"
    (folder / "cascade.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="outside its folder"):
        Cascade.from_pretrained(folder)
    doc["stages"][1]["wieghts"] = doc["stages"][1].pop("weights")
    (folder / "cascade.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="unknown field 'stages.1.wieghts'"):
        Cascade.from_pretrained(folder)


def test_cascade_saved_in_half_precision_loads_as_float32_with_rounded_weights(tmp_path) -> None:
    from safetensors import safe_open

    stage = _coarse()
    with torch.no_grad():
        for p in stage.parameters():
            p.normal_()
    Cascade([("coarse", stage)]).save_pretrained(tmp_path / "full")
    Cascade([("coarse", stage)]).save_pretrained(tmp_path / "half", stage_dtype=torch.float16)
    with safe_open(str(tmp_path / "half" / "coarse.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118 (not a dict)
    sizes = [(tmp_path / d / "coarse.safetensors").stat().st_size for d in ("full", "half")]
    assert sizes[1] < 0.75 * sizes[0]
    loaded = Cascade.from_pretrained(tmp_path / "half").stages["coarse"]
    for (k, v), (_, w) in zip(stage.state_dict().items(), loaded.state_dict().items()):
        assert w.dtype == torch.float32 and torch.equal(w, v.half().float()), k


def test_cascade_chain_must_fit() -> None:
    with pytest.raises(ConfigError, match="stage 'coarse' consumes None but 'up' produces Signals"):
        Cascade([("up", build_stage({"type": "toy.upsample"})), ("coarse", _coarse())])


def test_cascade_recipe_from_yaml(tmp_path) -> None:
    (tmp_path / "coarse.yaml").write_text("type: toy.coarse\nnetwork: {hidden: 32}\n")
    recipe = tmp_path / "cascade.yaml"
    recipe.write_text(
        "stages:\n  - {name: coarse, config: coarse.yaml}\n  - {name: up, config: {type: toy.upsample}}\n"
    )
    cascade = Cascade.from_config(recipe)
    assert cascade.names == ["coarse", "up"]
    assert cascade.stages["coarse"].config.network.hidden == 32
    (tmp_path / "coarse.yaml").write_text("type: toy.coarse\nnetwork: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Cascade.from_config(recipe)


def test_registry_resolves_entry_points_lazily(monkeypatch) -> None:
    from importlib import metadata

    class FakeEP:
        name = "fake.stage"

        def load(self):
            return "loaded!"

    reg = Registry("stage", entry_point_group="cdm3d.test")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEP()] if group == "cdm3d.test" else [])
    assert reg.names() == ["fake.stage"]
    assert reg.get("fake.stage") == "loaded!"
    with pytest.raises(ConfigError, match="known types: fake.stage"):
        reg.get("other")


def test_written_files_get_ordinary_permissions(tmp_path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        path = tmp_path / "c.safetensors"
        save_stage(_coarse(), path)
        assert oct(path.stat().st_mode & 0o777) == oct(0o644)
        folder = Cascade([("coarse", _coarse())]).save_pretrained(tmp_path / "casc")
        assert oct(folder.stat().st_mode & 0o777) == oct(0o755)
    finally:
        os.umask(umask)


def test_stage_names_are_checked_when_the_cascade_is_built() -> None:
    for bad in ("../evil", "my stage", "clip", "", "1st"):
        with pytest.raises(ConfigError, match="invalid stage name"):
            Cascade([(bad, _coarse())])


def test_sampling_overrides_cannot_exceed_the_training_steps() -> None:
    stage = _coarse(diffusion={"schedule": {"num_train_timesteps": 50}}, sampling={"steps": 10})
    with pytest.raises(ConfigError, match="exceed"):
        stage.resolve_sampling({"steps": 80})


def test_conditioning_select_with_a_mask_keeps_prompts_aligned() -> None:
    from cdm3d.core import Conditioning

    cond = Conditioning({"text": torch.eye(3)}, {"text": torch.zeros(3)}, ["a", "b", "c"])
    sub = cond.select(torch.tensor([False, True, True]))
    assert sub.prompts == ["b", "c"] and sub.batch_size == 2
    assert cond.select(slice(0, 2)).prompts == ["a", "b"] and cond.select([2, 0]).prompts == ["c", "a"]
