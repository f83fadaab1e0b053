"""``cdm3d eval`` on a tiny cascade: every point-stage figure lands in the JSON."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch

from cdm3d.cli import main
from cdm3d.core import Cascade, build_stage, load_cascade_clip
from cdm3d.data.vocab import CATEGORIES
from cdm3d.eval.bench import point_cascade
from cdm3d.paths import POINT_CLASSIFIER


def _tiny_expert(stage):
    from cdm3d.core import build_stage

    config = stage.config.model_dump(mode="json")
    config["diffusion"]["timesteps"] = [0, 300]
    return build_stage(config)


def test_eval_writes_fidelity_distribution_and_upsampler_figures(tmp_path, capsys) -> None:
    tiny = point_cascade("tiny", "cpu")
    tiny.stages["coarse"].set_expert(_tiny_expert(tiny.stages["coarse"]))
    Cascade(list(tiny.stages.items()), clip=load_cascade_clip()).save_pretrained(tmp_path / "tiny")
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", str(tmp_path / "tiny"), "--per-category", "2", "--batch", "26", "--steps", "2"]
    assert main([*argv, "--skip-speed", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompts"] == 26
    for part in ("coarse", "final"):
        assert 0 <= report[part]["category_fidelity"] <= 1 and len(report[part]["category_fidelity_per_category"]) == 13
    mean = report["final"]["distribution_cd"]["mean_over_categories"]
    assert {"1nna_cd", "cov_cd", "mmd_cd"} <= set(mean)
    assert report["upsampler_vs_nearest_neighbour"]["cd_nearest_neighbour"] > 0
    assert report["sampling"]["coarse"]["steps"] == 2
    ablation = report["expert_ablation"]
    assert (
        ablation["switch_timestep"] == 300
        and ablation["with_expert"]["coarse"] == report["coarse"]["category_fidelity"]
    )
    assert 0 <= ablation["without_expert"]["final"] <= 1
    assert main([*argv, "--classifier", str(tmp_path / "none.safetensors")]) == 2
    assert "classifier weights not found" in capsys.readouterr().err


def test_assemble_cascade_sets_default_sampling(tmp_path, capsys) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import assemble_cascade

    from cdm3d.core import save_stage
    from cdm3d.paths import DEFAULT_MODEL

    tiny = point_cascade("tiny", "cpu")
    save_stage(tiny.stages["coarse"], tmp_path / "coarse.safetensors")
    argv = ["--clip", str(DEFAULT_MODEL / "clip.safetensors"), "--stage", f"coarse={tmp_path / 'coarse.safetensors'}"]
    argv += ["--sampling", "coarse.scheduler=unipc", "--sampling", "coarse.steps=7", "--out", str(tmp_path / "c")]
    assert assemble_cascade.main(argv) == 0
    sampling = Cascade.from_pretrained(tmp_path / "c", load_clip=False).stages["coarse"].config.sampling
    assert (sampling.scheduler, sampling.steps) == ("unipc", 7)
    save_stage(_tiny_expert(tiny.stages["coarse"]), tmp_path / "expert.safetensors")
    expert = ["--expert", f"coarse={tmp_path / 'expert.safetensors'}"]
    assert assemble_cascade.main([*argv[:-2], *expert, "--out", str(tmp_path / "e")]) == 0
    assert Cascade.from_pretrained(tmp_path / "e", load_clip=False).stages["coarse"].expert is not None
    assert assemble_cascade.main([*argv[:-2], "--expert", f"mesh={tmp_path / 'expert.safetensors'}", "--out", "f"]) == 2
    assert "NAME a diffusion stage" in capsys.readouterr().err
    assert assemble_cascade.main([*argv[:-2], "--sampling", "coarse.steps=zero", "--out", str(tmp_path / "d")]) == 2
    assert "sampling.steps" in capsys.readouterr().err and not (tmp_path / "d").exists()
    # The CLIP's image framing travels in cascade.yaml and comes back on the loaded encoder.
    assert assemble_cascade.main([*argv[:-2], "--clip-image-fill", "0.7", "--out", str(tmp_path / "g")]) == 0
    assert Cascade.from_pretrained(tmp_path / "g").clip.image_fill == 0.7
    assert Cascade.from_pretrained(tmp_path / "c").clip.image_fill is None
    assert assemble_cascade.main([*argv[:-2], "--clip-image-fill", "2", "--out", str(tmp_path / "h")]) == 2
    assert "--clip-image-fill must lie in [0.05, 1]" in capsys.readouterr().err and not (tmp_path / "h").exists()
    # --as-type loads a weights file as another stage type with the same config fields and network.
    critic = build_stage({"type": "points.select", "embed_dim": 128, "network": {"width": 8}})
    save_stage(critic, tmp_path / "critic.safetensors")
    mesher = Path(__file__).resolve().parents[1] / "configs" / "stages" / "mesh" / "poisson.yaml"
    as_mesh = ["--stage", f"mesh={mesher}", "--stage", f"pick={tmp_path / 'critic.safetensors'}"]
    as_mesh += ["--as-type", "pick=mesh.select"]
    assert assemble_cascade.main([*argv[:-2], *as_mesh, "--out", str(tmp_path / "m")]) == 0
    assert Cascade.from_pretrained(tmp_path / "m", load_clip=False).stages["pick"].config.type == "mesh.select"
    assert assemble_cascade.main([*argv[:-2], "--as-type", "nope=mesh.select", "--out", str(tmp_path / "n")]) == 2
    assert "--as-type names stages without a weights file" in capsys.readouterr().err


def test_eval_meshes_writes_fidelity_watertightness_and_chamfer(tmp_path) -> None:
    import yaml

    from cdm3d.core import build_stage

    tiny = point_cascade("tiny", "cpu")
    sdf = {
        "type": "mesh.sdf",
        "embed_dim": 128,
        "input_points": 64,
        "network": {"width": 16, "encoder_layers": 1, "decoder_layers": 1, "heads": 2},
        "sampling": {"grid": 16},
    }
    stages = [*tiny.stages.items(), ("mesh", build_stage(sdf))]
    Cascade(stages, clip=load_cascade_clip()).save_pretrained(tmp_path / "tiny")
    (tmp_path / "poisson.yaml").write_text(yaml.safe_dump({"type": "mesh.poisson", "depth": 5}))
    out = tmp_path / "mesh.json"
    argv = ["eval", "--meshes", "--model", str(tmp_path / "tiny"), "--per-category", "1", "--batch", "13"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompts"] == 13 and report["mesh_stage"]["type"] == "mesh.sdf"
    for row in ("pipeline", "ground_truth_clouds", "poisson_pipeline"):
        r = report[row]
        assert r["meshes"] == 13 and 0 <= r["failed"] <= 13
        assert 0 <= r["category_fidelity"] <= 1 and len(r["category_fidelity_per_category"]) == 13
        if r["failed"] < 13:
            assert r["chamfer_to_ground_truth_mean"] > 0 and 0 <= r["watertight_fraction"] <= 1
    for row in ("pipeline", "ground_truth_clouds"):  # marching cubes on a padded grid: closed surfaces
        assert report[row]["failed"] == 13 or report[row]["watertight_fraction"] == 1.0
    out2 = tmp_path / "poisson.json"
    argv2 = [*argv, "--mesh-stage", str(tmp_path / "poisson.yaml"), "--out", str(out2)]
    assert main(argv2) == 0
    report = json.loads(out2.read_text())
    assert report["mesh_stage"]["type"] == "mesh.poisson" and "poisson_pipeline" not in report


def test_eval_meshes_runs_a_mesh_selector_with_the_pipeline_and_ablates_it(tmp_path) -> None:
    from cdm3d.core import build_stage

    tiny = point_cascade("tiny", "cpu")
    critic = {"embed_dim": 128, "num_points": 64, "network": {"width": 8}}
    pick = build_stage({"type": "points.select", **critic, "sampling": {"candidates": 3, "keep": 2}})
    chooser = build_stage({"type": "mesh.select", **critic, "sampling": {"candidates": 1}})
    chooser.load_state_dict(pick.state_dict())
    sdf = {"type": "mesh.sdf", "embed_dim": 128, "input_points": 32, "sampling": {"grid": 12}}
    sdf["network"] = {"width": 16, "encoder_layers": 1, "decoder_layers": 1, "heads": 2}
    stages = [*tiny.stages.items(), ("select", pick), ("mesh", build_stage(sdf)), ("mesh_select", chooser)]
    Cascade(stages, clip=load_cascade_clip()).save_pretrained(tmp_path / "tiny")
    out = tmp_path / "mesh.json"
    argv = ["eval", "--meshes", "--model", str(tmp_path / "tiny"), "--per-category", "1", "--batch", "13"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mesh_stage"]["type"] == "mesh.sdf"
    assert report["mesh_selector"]["stage"] == "mesh_select" and report["mesh_selector"]["candidates_meshed"] == 2
    for row in ("pipeline", "pipeline_without_mesh_selection", "ground_truth_clouds", "poisson_pipeline"):
        assert report[row]["meshes"] == 13 and 0 <= report[row]["category_fidelity"] <= 1
    # The selection sweep meshes the selector's best 2 clouds per prompt and sweeps the mesh selector's choice.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import selection_sweep

    classifier = POINT_CLASSIFIER
    argv = ["--model", str(tmp_path / "tiny"), "--classifier", str(classifier), "--candidates", "3", "--meshes", "2"]
    assert selection_sweep.main([*argv, "--per-category", "1", "--out", str(tmp_path / "sweep.json")]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())["text_meshes"]
    assert [r["meshes"] for r in rows] == [1, 2] and rows[0]["chosen"] == rows[0]["cloud_rank_meshed"]
    assert all(0 <= r["chosen"] <= r["oracle"] <= 1 for r in rows) and rows[0]["oracle"] <= rows[1]["oracle"]


def test_eval_images_writes_fidelity_fid_ablation_and_image_to_3d(tmp_path) -> None:
    from cdm3d.core import save_stage

    net = {"channels": 16, "mults": [1, 2], "attention": [], "heads": 2, "groups": 4}
    base = build_stage({"type": "images.base", "embed_dim": 128, "size": 8, "network": net})
    sr = {"type": "images.sr", "embed_dim": 128, "size": 16, "low_size": 8, "network": net}
    sr_aug, sr_noaug = build_stage({**sr, "sampling": {"aug_level": 0.2, "strength": 0.5}}), build_stage(sr)
    for stage in (base, sr_aug, sr_noaug):
        for p in stage.parameters():
            torch.nn.init.normal_(p, std=0.05)
    Cascade([("base", base), ("sr", sr_aug)], clip=load_cascade_clip()).save_pretrained(tmp_path / "img")
    save_stage(sr_noaug, tmp_path / "noaug.safetensors")
    tiny = point_cascade("tiny", "cpu")
    Cascade(list(tiny.stages.items()), clip=load_cascade_clip()).save_pretrained(tmp_path / "shape")
    out = tmp_path / "img.json"
    argv = ["eval", "--images", "--model", str(tmp_path / "img"), "--per-category", "1", "--batch", "13"]
    argv += ["--sr-noaug", str(tmp_path / "noaug.safetensors"), "--shape-model", str(tmp_path / "shape")]
    argv += ["--fid-reference", "20", "--steps", "2", "--skip-speed", "--seeds", "3", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    for row in ("base", "sr", "real_renders"):
        assert 0 <= report[row]["category_fidelity"] <= 1 and report[row]["fid"] >= 0
        assert 0 <= report[row]["classifier_category_fidelity"] <= 1  # the shipped render classifier
    # Three seeds: the first is the report's own images, the mean is over all three.
    seeds = report["over_seeds"]
    assert len(seeds["seeds"]) == 3
    for row in ("base", "sr"):
        per_seed = seeds[row]["per_seed"]
        assert len(per_seed) == 3 and per_seed[0]["category_fidelity"] == report[row]["category_fidelity"]
        mean = sum(r["classifier_color_fidelity"] for r in per_seed) / 3
        assert abs(seeds[row]["classifier_color_fidelity"] - mean) < 1e-4
    assert report["real_renders"]["fid"] < report["base"]["fid"]  # noise images are far from renders
    ablation = report["cdm_ablation"]
    # The SR stage samples with SDEdit (strength 0.5), so every row is measured again from noise.
    rows = {"with_augmentation_level_0.2", "without_augmentation"}
    assert rows | {r + "_from_noise" for r in rows} <= set(ablation)
    assert set(ablation["without_augmentation"]) == {"on_generated_low_res", "on_real_low_res"}
    # On generated images each row is measured at every seed's base images, the mean over them reported.
    generated = ablation["without_augmentation_from_noise"]["on_generated_low_res"]
    assert len(generated["per_seed"]) == 3
    assert abs(generated["fid"] - sum(r["fid"] for r in generated["per_seed"]) / 3) < 1e-3
    assert report["sampling"]["sr"]["strength"] == 0.5
    # The shape cascade carries the shipped CLIP's image framing, so the unframed ablation is reported too.
    for label in ("image_to_3d", "text_image_to_3d", "image_to_3d_without_reframing"):
        assert 0 <= report["to_3d"][label]["category_fidelity"] <= 1


def test_sr_strength_sweep_writes_a_row_per_strength_over_seeds(tmp_path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import sr_strength_sweep

    net = {"channels": 16, "mults": [1, 2], "attention": [], "heads": 2, "groups": 4}
    base = build_stage({"type": "images.base", "embed_dim": 128, "size": 8, "network": net})
    sr = build_stage({"type": "images.sr", "embed_dim": 128, "size": 16, "low_size": 8, "network": net})
    Cascade([("base", base), ("sr", sr)], clip=load_cascade_clip()).save_pretrained(tmp_path / "img")
    out = tmp_path / "sweep.json"
    argv = ["--model", str(tmp_path / "img"), "--per-category", "1", "--seeds", "2", "--reference", "4"]
    argv += ["--sampling", "base.steps=2", "--sampling", "sr.steps=4", "--strengths", "1", "0.5", "--out", str(out)]
    assert sr_strength_sweep.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["prompts"] == 13 and report["sampling"]["sr"]["steps"] == 4
    assert set(report["sr"]) == {"1", "0.5"}
    assert report["sr"]["1"]["sr_steps_run"] == 4 and report["sr"]["0.5"]["sr_steps_run"] == 2
    for row in [report["base"], *report["sr"].values()]:
        assert len(row["per_seed"]) == 2 and row["fid_first_seed"] >= 0
        mean = sum(r["classifier_category_fidelity"] for r in row["per_seed"]) / 2
        assert abs(row["classifier_category_fidelity"] - mean) < 1e-4
    against = report["sr"]["0.5"]["against_base"]
    assert set(against) == {"category", "colour"} and against["category"]["images"] == 26  # 13 prompts x 2 seeds
    assert 0 <= against["colour"]["p_mcnemar"] <= 1
    assert sum(against["category"]["lost_as"].values()) == against["category"]["lost"]
    groups = against["colour"]["by_group"]  # 13 prompts of one colour each at per-category 1 on val
    assert sum(g["images"] for g in groups.values()) == 26
    assert sum(g["lost"] for g in groups.values()) == against["colour"]["lost"]
    lo, hi = against["colour"]["ci95_by_prompt"]
    assert lo <= against["colour"]["difference"] <= hi
    assert abs(against["colour"]["difference"] * 26 - (against["colour"]["gained"] - against["colour"]["lost"])) < 0.01
    assert set(report["sr"]["1"]["against_base_at_base_size"]) == {"category", "colour"}
    assert report["classifier_on_renders_through_base_size"]["category"]["images"] == 13
    on_real = report["sr"]["1"]["on_renders_at_base_size"]["colour"]  # the first seed only: 13 images
    assert on_real["images"] == 13 and sum(g["images"] for g in on_real["by_group"].values()) == 13
    # McNemar's exact test counts only the images that changed: 6 gained and none lost is p = 2 / 2^6.
    base = {"category": torch.tensor([True] * 4 + [False] * 6), "colour": torch.ones(10, dtype=torch.bool)}
    other = {"category": torch.ones(10, dtype=torch.bool), "colour": torch.ones(10, dtype=torch.bool)}
    result = sr_strength_sweep.paired(base, other)
    assert result["category"] == {"lost": 0, "gained": 6, "images": 10, "p_mcnemar": 0.0312}
    assert result["colour"]["p_mcnemar"] == 1.0  # nothing changed
    # Two seeds of five prompts: per group, and the bootstrap over prompts keeps a prompt's seeds together.
    groups = ["one colour"] * 4 + ["two colours"] + ["one colour"] * 4 + ["two colours"]
    result = sr_strength_sweep.paired(base, other, groups=groups, prompts=5)["category"]
    assert result["by_group"] == {
        "one colour": {"images": 8, "lost": 0, "gained": 4},
        "two colours": {"images": 2, "lost": 0, "gained": 2},
    }
    assert result["difference"] == 0.6 and 0 < result["ci95_by_prompt"][0] <= 0.6 <= result["ci95_by_prompt"][1] <= 1
    same = sr_strength_sweep.paired(other, other, prompts=5)["colour"]
    assert same["difference"] == 0 and same["ci95_by_prompt"] == [0, 0]
    readings = {"category": ["cube -> cube"] * 4 + ["cube -> mug"] * 6, "colour": ["red -> red"] * 10}
    lost = sr_strength_sweep.paired(other, base, readings)["category"]  # the other way round: 6 lost
    assert lost["lost"] == 6 and lost["lost_as"] == {"cube -> mug": 6}
    assert sr_strength_sweep.main([*argv[:-1], str(tmp_path / "x.json"), "--strengths", "0"]) == 2
    assert not (tmp_path / "x.json").exists()


def test_eval_images_on_validation_prompts_uses_the_validation_split_throughout(tmp_path, monkeypatch) -> None:
    from cdm3d.eval import images_eval
    from cdm3d.eval.points_eval import prompts_per_category

    net = {"channels": 16, "mults": [1, 2], "attention": [], "heads": 2, "groups": 4}
    base = build_stage({"type": "images.base", "embed_dim": 128, "size": 8, "network": net})
    sr = build_stage({"type": "images.sr", "embed_dim": 128, "size": 16, "low_size": 8, "network": net})
    Cascade([("base", base), ("sr", sr)], clip=load_cascade_clip()).save_pretrained(tmp_path / "img")
    seen, renders = [], images_eval.renders
    monkeypatch.setattr(
        images_eval, "renders", lambda idx, size, split="test": seen.append((idx, split)) or renders(idx, size, split)
    )
    out = tmp_path / "val.json"
    argv = ["eval", "--images", "--model", str(tmp_path / "img"), "--per-category", "1", "--batch", "13"]
    assert (
        main([*argv, "--fid-reference", "4", "--steps", "1", "--skip-speed", "--split", "val", "--out", str(out)]) == 0
    )
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["prompts"] == 13 and "val objects" in report["fid_reference"]
    # The prompts' own renders are the validation objects the prompts describe, and so is the FID reference.
    assert seen == [([p[0] for p in prompts_per_category(1, "val")], "val"), (list(range(2000, 2004)), "val")]


def test_solver_and_augmentation_sweeps_write_a_row_per_setting_on_validation_prompts(tmp_path) -> None:
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import solver_sweep

    from cdm3d.data.world import World
    from cdm3d.eval.points_eval import prompts_per_category

    tiny = point_cascade("tiny", "cpu")
    Cascade(list(tiny.stages.items()), clip=load_cascade_clip()).save_pretrained(tmp_path / "tiny")
    out = tmp_path / "sweep.json"
    argv = ["--model", str(tmp_path / "tiny"), "--classifier", str(POINT_CLASSIFIER)]
    argv += ["--settings", "ddim:2", "unipc:2", "--guidance", "1", "3", "--per-category", "1", "--batch", "13"]
    assert solver_sweep.main([*argv, "--split", "val", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["split"] == "val" and report["prompts"] == 13
    assert [(r["scheduler"], r["coarse_guidance"]) for r in report["rows"]] == [
        ("ddim", 1.0),
        ("ddim", 3.0),
        ("unipc", 1.0),
        ("unipc", 3.0),
    ]
    import upsample_aug_sweep

    argv = ["--model", str(tmp_path / "tiny"), "--classifier", str(POINT_CLASSIFIER)]
    argv += ["--levels", "0", "0.2", "--per-category", "1", "--batch", "13", "--out", str(tmp_path / "aug.json")]
    assert upsample_aug_sweep.main(argv) == 0
    aug = json.loads((tmp_path / "aug.json").read_text())
    assert aug["split"] == "val" and [r["aug_level"] for r in aug["rows"]] == [0.0, 0.2]
    assert 0 <= aug["coarse"]["category_fidelity"] <= 1
    val = prompts_per_category(1, "val")
    assert [p[1] for p in val] == [World("val").caption(p[0]) for p in val] != [p[1] for p in prompts_per_category(1)]


def test_eval_of_a_high_noise_stage_reports_why_it_has_no_expert_ablation(tmp_path) -> None:
    from cdm3d.core import build_stage
    from cdm3d.eval.points_eval import evaluate_points

    tiny = point_cascade("tiny", "cpu")
    config = tiny.stages["coarse"].config.model_dump(mode="json")
    config["diffusion"]["timesteps"] = [300, 1000]
    high = build_stage(config)
    high.set_expert(_tiny_expert(high))
    stages = [("coarse", high), ("upsample", tiny.stages["upsample"])]
    Cascade(stages, clip=load_cascade_clip()).save_pretrained(tmp_path / "high")
    classifier = POINT_CLASSIFIER
    report = evaluate_points(tmp_path / "high", classifier, 1, 13, speed=False, overrides={"steps": 2})
    ablation = report["expert_ablation"]
    assert ablation["without_expert"] is None and "cannot sample without its expert" in ablation["why"]
    assert ablation["with_expert"]["final"] == report["final"]["category_fidelity"]


def test_eval_and_selection_sweep_with_a_selector_stage(tmp_path) -> None:
    """A cascade with points.select: the eval reports fidelity with and without the choice; the sweep a row per
    number of candidates, the chosen fidelity between the worst case and the oracle."""
    import sys

    from cdm3d.core import build_stage
    from cdm3d.eval.points_eval import evaluate_points

    root = Path(__file__).resolve().parents[1]
    tiny = point_cascade("tiny", "cpu")
    clip = load_cascade_clip()
    select = build_stage({"type": "points.select", "embed_dim": clip.embed_dim, "network": {"width": 8}})
    select.config = select.config.model_copy(
        update={"sampling": select.config.sampling.model_copy(update={"candidates": 3})}
    )
    Cascade([*tiny.stages.items(), ("select", select)], clip=clip).save_pretrained(tmp_path / "tiny")
    classifier = POINT_CLASSIFIER
    report = evaluate_points(
        tmp_path / "tiny", classifier, per_category=1, batch=13, speed=False, overrides={"steps": 2}
    )
    ablation = report["selection_ablation"]
    assert ablation["stage"] == "select" and ablation["candidates"] == 3
    assert ablation["with_selection"]["final"] == report["final"]["category_fidelity"]
    assert 0 <= ablation["without_selection"]["final"]["category_fidelity"] <= 1
    assert report["sampling"]["select"]["candidates"] == 3 and report["sampling"]["coarse"]["steps"] == 2

    sys.path.insert(0, str(root / "benchmarks"))
    import selection_sweep

    out = tmp_path / "sel.json"
    argv = ["--model", str(tmp_path / "tiny"), "--classifier", str(classifier), "--candidates", "3"]
    assert selection_sweep.main([*argv, "--per-category", "1", "--images", "--out", str(out)]) == 0
    sweep = json.loads(out.read_text())
    assert sweep["split"] == "val" and sweep["prompts"] == 13
    for part in ("text", "image"):
        rows = sweep[part]
        assert [r["candidates"] for r in rows] == [1, 2, 3]
        assert rows[0]["chosen"] == rows[0]["single_sample"] == rows[0]["oracle"]
        for r in rows:
            assert 0 <= r["chosen"] <= r["oracle"] <= 1
        assert all(a["oracle"] <= b["oracle"] for a, b in itertools.pairwise(rows))
    # A point stage's sampling setting for the candidates is recorded; a malformed one is refused.
    argv += ["--per-category", "1"]
    assert selection_sweep.main([*argv, "--sampling", "upsample.steps=1", "--out", str(tmp_path / "s1.json")]) == 0
    assert json.loads((tmp_path / "s1.json").read_text())["sampling"] == {"upsample": {"steps": 1}}
    for bad in ("upsample.steps", "select.candidates=2", "nosuch.steps=2", "upsample=2"):
        assert selection_sweep.main([*argv, "--sampling", bad, "--out", str(tmp_path / "s2.json")]) == 2
    assert not (tmp_path / "s2.json").exists()


def test_image_to_3d_benchmark_reports_the_text_prior_and_reframing_ablations(tmp_path) -> None:
    import copy
    import sys

    root = Path(__file__).resolve().parents[1]
    clip = load_cascade_clip()
    clip.text_prior = copy.deepcopy(clip.model.visual)  # any tower of the CLIP's shape will do here
    tiny = point_cascade("tiny", "cpu")
    Cascade(list(tiny.stages.items()), clip=clip).save_pretrained(tmp_path / "shape")
    sys.path.insert(0, str(root / "benchmarks"))
    import image_to_3d

    out = tmp_path / "i3d.json"
    argv = ["--model", str(tmp_path / "shape"), "--per-category", "1", "--batch", "13", "--split", "val"]
    assert image_to_3d.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["text_prior"] is True and report["prompts"] == 13 and report["split"] == "val"
    for label in ("image_to_3d", "image_to_3d_without_text_prior", "image_to_3d_without_reframing"):
        assert 0 <= report[label]["category_fidelity"] <= 1
        assert 0 <= report[label]["coarse_category_fidelity"] <= 1
    assert set(report["image_to_3d"]["category_fidelity_per_category"]) == set(CATEGORIES)
    assert report["seconds_per_image_batch1"]["median_s"] > 0
    assert image_to_3d.main([*argv, "--out", str(tmp_path / "missing" / "x.json")]) == 2


def test_two_colour_prompts_are_of_two_colour_objects_only() -> None:
    from cdm3d.data.vocab import SECONDARY_PART
    from cdm3d.data.world import World
    from cdm3d.eval.points_eval import prompts_per_category

    prompts = prompts_per_category(2, "val", two_colour=True)
    world = World("val")
    assert len(prompts) == 2 * len(SECONDARY_PART) and len({p[0] for p in prompts}) == len(prompts)
    for index, caption, category, colour in prompts:
        labels = world.labels(index)
        assert len(labels.colors) == 2 and labels.category == category and labels.colors[0] == colour
        assert caption == world.caption(index)
    assert sorted({p[2] for p in prompts}) == sorted(SECONDARY_PART)


def test_eval_runs_from_any_directory_after_a_plain_install(tmp_path) -> None:
    """The evaluation's classifiers are package data: installed (not from the checkout) and run from a folder
    that is not the checkout, ``cdm3d eval`` finds them."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*install, "--target", str(site), str(root)], check=True, cwd=tmp_path, timeout=300)
    tiny = point_cascade("tiny", "cpu")
    Cascade(list(tiny.stages.items()), clip=load_cascade_clip()).save_pretrained(tmp_path / "tiny")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    cli = [sys.executable, "-c", "import sys, cdm3d.cli; print(cdm3d.cli.__file__, file=sys.stderr); cdm3d.cli.main()"]

    def run(*argv: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*cli, *argv], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert proc.stderr.startswith(str(site)), proc.stderr  # the installed copy, not the checkout
        return proc

    assert run("eval", "--help").returncode == 0
    argv = ["eval", "--model", str(tmp_path / "tiny"), "--per-category", "1", "--batch", "13", "--steps", "2"]
    proc = run(*argv, "--skip-speed", "--out", "eval.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((elsewhere / "eval.json").read_text())
    assert report["prompts"] == 13 and 0 <= report["final"]["category_fidelity"] <= 1
