"""Evaluation of a cascade's mesh stage on the world's test prompts.

For each mesh: 1024 area-uniform surface points with their interpolated vertex
colours are read by the world classifier (category and colour fidelity, as for
clouds); watertightness (trimesh); Chamfer distance (PointFlow's convention:
squared distances, each direction averaged, summed) between 2048 surface
points and 2048 points of the ground-truth test object. Three rows:

* ``pipeline``: the meshes the cascade makes from the prompts: the mesh stage on the clouds the point
  stages generate, and, where the cascade has a selector among meshes after the mesh stage (the
  shipped ``mesh.select``), the whole cascade: the point selector's best clouds meshed, the best mesh kept;
* ``pipeline_without_mesh_selection`` (with a mesh selector): the mesh stage on the point selector's
  single best cloud per prompt, from the same candidates (the ablation of the mesh selector);
* ``ground_truth_clouds``: the mesh stage on the test objects' own surface clouds
  (what the stage alone loses, independent of the point stages);
* ``poisson_pipeline`` (optional): ``mesh.poisson`` on the clouds behind the pipeline's meshes.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdm3d.core import Cascade, Conditioning, SelectorStage, Stage
from cdm3d.data.meshes import sample_colored_points
from cdm3d.data.vocab import CATEGORIES, COLORS
from cdm3d.data.world import World
from cdm3d.errors import Cdm3dError
from cdm3d.eval.classifier import CLASSIFIER_POINTS, PointClassifier
from cdm3d.eval.point_metrics import chamfer
from cdm3d.eval.points_eval import generate, ground_truth, prompts_per_category
from cdm3d.types import PointClouds


def mesh_cloud(mesh: Any, points: int, seed: int = 0) -> torch.Tensor:
    """``[points, 6]`` surface samples (xyz, rgb in [-1, 1]) of a vertex-coloured trimesh."""
    xyz, rgb = sample_colored_points(mesh, points, seed)
    return torch.from_numpy(np.concatenate([xyz, rgb * 2 - 1], 1))


def _item_row(meshes: Any, i: int) -> dict[str, Any]:
    mesh = meshes.to_trimesh(i)
    return {
        "cloud": mesh_cloud(mesh, CLASSIFIER_POINTS),
        "dense": mesh_cloud(mesh, 2048, seed=1)[:, :3],
        "watertight": bool(mesh.is_watertight),
        "faces": len(meshes.faces[i]),
    }


def mesh_rows(
    stage: Stage,
    clouds: PointClouds,
    cond: Conditioning,
    prompts: list[tuple[int, str, str, str]],
    classifier: PointClassifier,
    batch: int,
    sampling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mesh ``clouds`` with ``stage`` in batches; fidelity, watertightness, CD and seconds per mesh."""
    items, seconds = mesh_in_batches(stage, clouds, cond, batch, sampling)
    rows = [{"failed": i} if meshes is None else _item_row(meshes, i) for meshes, i in items]
    return _summary(rows, prompts, classifier, seconds)


def mesh_in_batches(
    stage: Stage, clouds: PointClouds, cond: Conditioning, batch: int, sampling: dict[str, Any] | None = None
) -> tuple[list[tuple[Any, Any]], list[float]]:
    """Mesh ``clouds`` with ``stage``, ``batch`` at a time (generator seeded by the batch's start): per cloud
    ``(meshes, index)`` of its mesh, or ``(None, error)`` where the stage found no surface (a batch that fails
    is meshed item by item); and the seconds per mesh of each batch."""
    items: list[tuple[Any, Any]] = []
    seconds = []
    for start in range(0, len(clouds), batch):
        sl = slice(start, start + batch)
        t0 = time.perf_counter()
        try:
            meshes = stage.sample(
                clouds[sl], cond.select(sl), generator=torch.Generator().manual_seed(start), sampling=sampling
            )
            done = [(meshes, i) for i in range(len(meshes))]
        except Cdm3dError:  # one item without a surface fails its batch: mesh the batch item by item
            done = []
            for i in range(sl.start, min(sl.stop, len(clouds))):
                try:
                    done.append((stage.sample(clouds[i], cond.select([i]), sampling=sampling), 0))
                except Cdm3dError as err:
                    done.append((None, str(err)))
        seconds.append((time.perf_counter() - t0) / len(done))
        items += done
    return items, seconds


def pipeline_rows(
    cascade: Cascade,
    meshing: list[str],
    cond: Conditioning,
    prompts: list[tuple[int, str, str, str]],
    classifier: PointClassifier,
    batch: int,
    sampling: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], PointClouds]:
    """Run the whole ``cascade`` (point stages, mesh stage and a mesh selector) in batches as
    :func:`~cdm3d.eval.points_eval.generate` does (seed 0 + the batch's start); the mesh figures of its
    results, seconds per result of the ``meshing`` stages (every candidate meshed and scored), and the clouds
    behind the kept meshes."""
    rows: list[dict[str, Any]] = []
    seconds = []
    clouds = []
    last_points = [n for n in cascade.names if cascade.stages[n].produces == "PointClouds"][-1]
    for start in range(0, len(prompts), batch):
        sl = slice(start, start + batch)
        runs: list[Any] = []
        try:
            runs.append(cascade.run(cond.select(sl), seed=start, progress=False, sampling=sampling))
        except Cdm3dError:  # one item without a surface fails its batch: run the batch item by item
            for i in range(sl.start, min(sl.stop, len(prompts))):
                try:
                    runs.append(cascade.run(cond.select([i]), seed=start, progress=False, sampling=sampling))
                except Cdm3dError as err:  # no mesh: the row counts a failure, Poisson gets the best cloud
                    points = cascade.run(cond.select([i]), seed=start, progress=False, stop_at=last_points)
                    runs.append((str(err), points[last_points]))
        for out in runs:
            if isinstance(out, tuple):
                rows.append({"failed": out[0]})
                clouds.append(out[1])
                continue
            meshes = out.final
            seconds.append(sum(out.timings[n] for n in meshing) / len(meshes))
            rows += [_item_row(meshes, i) for i in range(len(meshes))]
            clouds += [out[last_points][i : i + 1] for i in range(len(meshes))]
    summary = _summary(rows, prompts, classifier, seconds)
    return summary, PointClouds(torch.cat([c.coords for c in clouds]), torch.cat([c.colors for c in clouds]))


def _summary(
    rows: list[dict[str, Any]], prompts: list[tuple[int, str, str, str]], classifier: PointClassifier, seconds: list
) -> dict[str, Any]:
    cats, cols = list(CATEGORIES), list(COLORS)
    ok = [i for i, r in enumerate(rows) if "failed" not in r]
    cat_ok = np.zeros(len(prompts))
    col_ok = np.zeros(len(prompts))
    cds = []
    if ok:
        cat_pred, col_pred = classifier.predict(torch.stack([rows[i]["cloud"] for i in ok]))
        for j, i in enumerate(ok):
            cat_ok[i] = cats[int(cat_pred[j])] == prompts[i][2]
            col_ok[i] = cols[int(col_pred[j])] == prompts[i][3]
        ref = torch.stack([ground_truth(prompts[i][0], 2048) for i in ok])
        cds = chamfer(torch.stack([rows[i]["dense"] for i in ok]), ref).tolist()
    per_category = {c: round(float(np.mean([cat_ok[i] for i, p in enumerate(prompts) if p[2] == c])), 4) for c in cats}
    return {
        "meshes": len(prompts),
        "failed": len(prompts) - len(ok),
        "failures": sorted({r["failed"] for r in rows if "failed" in r}),
        "category_fidelity": round(float(cat_ok.mean()), 4),
        "color_fidelity": round(float(col_ok.mean()), 4),
        "category_fidelity_per_category": per_category,
        "watertight_fraction": round(float(np.mean([rows[i]["watertight"] for i in ok])) if ok else 0.0, 4),
        "chamfer_to_ground_truth_mean": round(statistics.mean(cds), 6) if cds else None,
        "chamfer_to_ground_truth_median": round(statistics.median(cds), 6) if cds else None,
        "faces_median": int(statistics.median(rows[i]["faces"] for i in ok)) if ok else 0,
        "seconds_per_mesh_median": round(statistics.median(seconds), 3) if seconds else None,
        "threads": torch.get_num_threads(),
    }


def evaluate_meshes(
    model: str | Path,
    classifier_path: str | Path,
    per_category: int = 8,
    batch: int = 8,
    mesh_stage: str | Path | None = None,
    sampling: dict[str, Any] | None = None,
    poisson: bool = True,
) -> dict[str, Any]:
    """Mesh figures of a cascade folder (``mesh_stage``: a stage file or config to use instead of its own)."""
    from cdm3d.core import build_stage, load_stage, load_yaml
    from cdm3d.stages.mesh import PoissonMeshConfig, PoissonMeshStage

    torch.manual_seed(0)
    full = Cascade.from_pretrained(model)
    mesher, chooser = full.last_producer("Meshes")
    if mesh_stage is not None:
        path = str(mesh_stage)
        stage = build_stage(load_yaml(path)) if path.endswith((".yaml", ".yml")) else load_stage(path)
        chooser = None
    elif mesher is None:
        raise Cdm3dError(f"{model} has no mesh stage; pass --mesh-stage")
    else:
        stage = full.stages[mesher]
    point_names = [n for n in full.names if full.stages[n].produces == "PointClouds"]
    points = Cascade([(n, full.stages[n]) for n in point_names], clip=full.clip)
    prompts = prompts_per_category(per_category)
    cond = full.encode([p[1] for p in prompts])
    # A selector among meshes after the mesh stage (the shipped cascade's ``mesh.select``) is part of the
    # pipeline: then the pipeline row runs the whole cascade, and a row without it meshes the point stages'
    # single best cloud per prompt.
    single = {n: {"keep": 1} for n in point_names if isinstance(full.stages[n], SelectorStage)}
    classifier = PointClassifier.load(classifier_path)
    report: dict[str, Any] = {"model": str(model), "mesh_stage": stage.config.model_dump(), "prompts": len(prompts)}
    if chooser is not None:
        keep = max(full.stages[n].resolve_sampling(None).keep for n in single) if single else 1
        pipe = Cascade([(n, full.stages[n]) for n in [*point_names, mesher, chooser]], clip=full.clip)
        mesh_sampling = {mesher: sampling} if sampling else {}
        report["mesh_selector"] = {
            "stage": chooser,
            "candidates_meshed": keep,
            **full.stages[chooser].config.model_dump(),
        }
        report["pipeline"], clouds = pipeline_rows(
            pipe,
            [mesher, chooser],
            cond,
            prompts,
            classifier,
            batch,
            mesh_sampling,
        )
        best = generate(points, cond, batch, seed=0, sampling=single)[points.names[-1]]
        report["pipeline_without_mesh_selection"] = mesh_rows(stage, best, cond, prompts, classifier, batch, sampling)
    else:
        clouds = generate(points, cond, batch, seed=0, sampling=single)[points.names[-1]]
        report["pipeline"] = mesh_rows(stage, clouds, cond, prompts, classifier, batch, sampling)
    total = clouds.num_points
    report["cloud_points"] = total
    gt = [World("test")[p[0]].points(total, seed=4242) for p in prompts]
    gt_clouds = PointClouds(
        torch.stack([torch.from_numpy(x) for x, _ in gt]), torch.stack([torch.from_numpy(c) for _, c in gt])
    )
    report["ground_truth_clouds"] = mesh_rows(stage, gt_clouds, cond, prompts, classifier, batch, sampling)
    if poisson and stage.config.type != "mesh.poisson":
        ref = PoissonMeshStage(PoissonMeshConfig(trim_quantile=0.1))
        report["poisson_pipeline"] = mesh_rows(ref, clouds, cond, prompts, classifier, batch)
    return report
