"""The ``cdm3d`` command line: ``cdm3d generate | info | eval | bench``.

Heavy libraries load only inside the subcommand that needs them, so ``cdm3d
--help`` answers at once. A cdm3d error prints one line and exits non-zero;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser, Cdm3dError, InputError, one_line
from cdm3d.paths import DEFAULT_IMAGE_MODEL, DEFAULT_MODEL, IMAGE_CLASSIFIER, POINT_CLASSIFIER


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="run a cascade on prompts (and/or images) and save every result")
    p.add_argument("prompts", nargs="*", help="text prompts, one result each")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="cascade folder (default: the shipped one)")
    p.add_argument("-o", "--out", type=Path, default=Path("outputs"), help="output folder (default: outputs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-at", default=None, help="last stage to run (default: all)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps for every diffusion stage")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale for every diffusion stage")
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="samples per prompt the selector stage chooses among (default: the model's; 1: no choosing)",
    )
    p.add_argument(
        "--sampling",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="a stage's sampling setting, e.g. base.scheduler=dpm++ base.steps=20 mesh.grid=64 (repeatable)",
    )
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--mesher", choices=["sdf", "poisson"], default=None, help="mesh stage (default: the folder's)")
    p.add_argument("--images", action="store_true", help="text -> image: run the shipped image cascade")
    p.add_argument(
        "--via-image",
        nargs="?",
        type=Path,
        const=DEFAULT_IMAGE_MODEL,
        default=None,
        metavar="FOLDER",
        help="text -> image -> 3D: generate an image first (default: the shipped image cascade) and condition "
        "the 3D stages on its CLIP embedding and the prompt's",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--no-preview", action="store_true", help="do not write preview PNGs")
    p.set_defaults(func=_generate)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a cascade folder, the stage types and the schedulers")
    p.add_argument("--model", type=Path, default=None, help="a cascade folder to describe")
    p.set_defaults(func=_info)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time the point stages: latency, throughput, memory, TFLOP/s (JSON)")
    p.add_argument(
        "--geometry",
        nargs="+",
        default=["tiny"],
        help="tiny, pointe (random weights) or cascade folders (default: tiny)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scheduler", default=None, help="override every stage's solver")
    p.add_argument("--steps", type=int, default=None, help="override every stage's step count")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoisers")
    p.add_argument("--no-autocast", action="store_true", help="fp32 on CUDA (bf16 autocast is the default)")
    p.add_argument("--compare", action="store_true", help="also time fp32 eager vs these settings, same process")
    p.add_argument(
        "--mesh-grids",
        type=int,
        nargs="*",
        default=[],
        help="also time mesh.sdf (the folder's, else random weights) at these grid sizes, e.g. 64 128",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from cdm3d.core.checkpoint import atomic_path, check_parent
    from cdm3d.eval.bench import bench, bench_mesh, compare_settings
    from cdm3d.stages import load_builtin

    device = _check_device(args.device)
    if any(b < 1 for b in args.batches) or args.repeats < 1:
        raise InputError("--batches and --repeats must be positive")
    if args.out is not None:
        check_parent(args.out)
    load_builtin()
    settings: dict = {"compile": args.compile, "autocast": not args.no_autocast}
    if args.scheduler:
        settings["scheduler"] = args.scheduler
    if args.steps:
        settings["steps"] = args.steps
    results = []
    for geometry in args.geometry:
        result = bench(geometry, device, tuple(args.batches), args.repeats, settings)
        if args.compare:
            base = {k: v for k, v in settings.items() if k not in ("compile", "autocast")}
            result["compare"] = compare_settings(
                geometry, device, {**base, "compile": False, "autocast": False}, settings, args.repeats
            )
        if args.mesh_grids:
            if any(g < 8 for g in args.mesh_grids):
                raise InputError("--mesh-grids must be at least 8")
            # Meshing cost grows with the batch; time it at the batch sizes up to 8 (a grid per mesh).
            mesh_batches = tuple(b for b in args.batches if b <= 8) or (1,)
            result["mesh_sdf"] = bench_mesh(geometry, device, tuple(args.mesh_grids), mesh_batches, args.repeats)
        print(json.dumps(result))
        results.append(result)
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({"torch_threads": torch.get_num_threads(), "results": results}, indent=2))
        print(args.out)
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="point-stage fidelity, 1-NNA/COV/MMD, upsampler vs nearest neighbour (JSON)")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="cascade folder (default: the shipped one)")
    p.add_argument(
        "--classifier", type=Path, default=POINT_CLASSIFIER, help="the point classifier (default: the shipped one)"
    )
    p.add_argument("--per-category", type=int, default=16, help="test prompts per category")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--upsampler-noaug", type=Path, default=None, help="upsampler weights for the augmentation ablation")
    p.add_argument("--scheduler", default=None, help="override every point stage's solver")
    p.add_argument("--steps", type=int, default=None, help="override every point stage's step count")
    p.add_argument("--guidance", type=float, default=None, help="override the first stage's guidance scale")
    p.add_argument("--skip-speed", action="store_true", help="do not time batch-1 sampling")
    p.add_argument(
        "--meshes",
        action="store_true",
        help="evaluate the mesh stage instead: fidelity of mesh surface samples, watertightness, CD to ground truth",
    )
    p.add_argument("--mesh-stage", type=Path, default=None, help="with --meshes: a mesh stage file or config to use")
    p.add_argument("--grid", type=int, default=None, help="with --meshes: the mesh.sdf grid size")
    p.add_argument("--no-poisson", action="store_true", help="with --meshes: skip the mesh.poisson comparison")
    p.add_argument(
        "--images",
        action="store_true",
        help="evaluate an image cascade (--model, default: the shipped one) instead: CLIP fidelity, FID, "
        "the CDM augmentation ablation (--sr-noaug), image -> 3D (--shape-model)",
    )
    p.add_argument("--sr-noaug", type=Path, default=None, help="with --images: SR weights trained without augmentation")
    p.add_argument("--shape-model", type=Path, default=None, help="with --images: the 3D cascade for image -> 3D")
    p.add_argument("--fid-reference", type=int, default=1000, help="with --images: real renders FID compares with")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="with --images: measure the base and SR fidelity at this many seeds (their means in 'over_seeds')",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="with --images: the world split whose prompts and renders to use (val: to choose settings)",
    )
    p.add_argument(
        "--image-classifier",
        type=Path,
        default=IMAGE_CLASSIFIER,
        help="with --images: the render classifier (a second fidelity instrument beside zero-shot CLIP)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print only)")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import json

    from cdm3d.core.checkpoint import atomic_path, check_parent
    from cdm3d.stages import load_builtin

    if args.per_category < 1 or args.batch < 1 or args.fid_reference < 2 or args.seeds < 1:
        raise InputError("--per-category, --batch and --seeds must be positive, --fid-reference at least 2")
    if not args.classifier.is_file():
        raise InputError(
            f"classifier weights not found: {args.classifier} (train one with configs/train/eval/point_classifier.yaml)"
        )
    if args.out is not None:
        check_parent(args.out)
    load_builtin()
    settings = {k: v for k, v in (("scheduler", args.scheduler), ("steps", args.steps)) if v is not None}
    evaluate = _eval_images if args.images else _eval_meshes if args.meshes else _eval_points
    report = evaluate(args, settings)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
        print(args.out)
    rows = [
        k
        for k in ("coarse", "final", "pipeline", "ground_truth_clouds", "poisson_pipeline", "base", "sr")
        if k in report
    ]
    summary = {k: {f: report[k][f] for f in ("category_fidelity", "color_fidelity")} for k in rows}
    print(json.dumps(summary))
    return 0


def _eval_points(args: argparse.Namespace, settings: dict) -> dict:
    from cdm3d.eval.points_eval import evaluate_points

    return evaluate_points(
        args.model,
        args.classifier,
        args.per_category,
        args.batch,
        args.upsampler_noaug,
        not args.skip_speed,
        settings,
        args.guidance,
    )


def _eval_meshes(args: argparse.Namespace, settings: dict) -> dict:
    from cdm3d.eval.mesh_eval import evaluate_meshes

    if args.mesh_stage is not None and not args.mesh_stage.is_file():
        raise InputError(f"mesh stage not found: {args.mesh_stage}")
    grid = None if args.grid is None else {"grid": args.grid}
    return evaluate_meshes(
        args.model, args.classifier, args.per_category, args.batch, args.mesh_stage, grid, poisson=not args.no_poisson
    )


def _eval_images(args: argparse.Namespace, settings: dict) -> dict:
    from cdm3d.eval.images_eval import evaluate_images

    model = DEFAULT_IMAGE_MODEL if args.model == DEFAULT_MODEL else args.model
    for path in (args.sr_noaug, args.image_classifier):
        if path is not None and not path.is_file():
            raise InputError(f"weights not found: {path}")
    return evaluate_images(
        model,
        args.per_category,
        args.batch,
        args.sr_noaug,
        args.shape_model,
        args.classifier if args.shape_model is not None else None,
        args.image_classifier,
        reference=args.fid_reference,
        speed=not args.skip_speed,
        overrides=settings,
        seeds=args.seeds,
        split=args.split,
    )


def _check_device(name: str) -> str:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but no CUDA GPU is available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return name


def _prepare_output_folder(out: Path, stems: list[str], count: int, force: bool) -> None:
    """Create ``out`` and refuse, before any work, to overwrite results there without ``force``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the output folder {out}: {err.strerror}") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"the output folder {out} is not writable")
    if force:
        return
    existing = [p for stem in [*stems, "preview"] for i in range(count) for p in out.glob(f"{stem}_{i}.*")]
    if existing:
        raise InputError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --force to overwrite")


def _generate(args: argparse.Namespace) -> int:
    from cdm3d.core import Cascade, SelectorStage
    from cdm3d.pipelines import parse_sampling_items, sampling_overrides

    if not args.prompts:
        raise InputError('give at least one prompt, e.g. cdm3d generate "a tall red lamp"')
    from cdm3d.core.clip import check_prompts

    check_prompts(args.prompts)  # before any model is loaded or any folder created
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    if args.guidance is not None and not 0 <= args.guidance < float("inf"):
        raise InputError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.images and args.via_image is not None:
        raise InputError("--images and --via-image exclude each other")
    model = DEFAULT_IMAGE_MODEL if args.images and args.model == DEFAULT_MODEL else args.model
    for folder in (model, args.via_image):
        if folder is not None and not folder.is_dir():
            raise InputError(f"no cascade folder at {folder}")
    from cdm3d.stages import load_builtin

    device = _check_device(args.device)
    load_builtin()
    from cdm3d.pipelines import with_mesher

    cascade = with_mesher(Cascade.from_pretrained(model), args.mesher)
    sampling = sampling_overrides(cascade, args.steps, args.guidance, args.candidates)
    for name, settings in parse_sampling_items(args.sampling, cascade.names).items():
        sampling[name] = {**sampling.get(name, {}), **settings}
    if args.via_image is None:
        _prepare_output_folder(args.out, cascade.names, len(args.prompts), args.force)
        outputs = cascade(args.prompts, seed=args.seed, stop_at=args.stop_at, sampling=sampling, device=device).outputs
    else:
        painter = Cascade.from_pretrained(args.via_image)
        stems = [f"image.{n}" for n in painter.names] + cascade.names
        _prepare_output_folder(args.out, stems, len(args.prompts), args.force)
        first = painter(
            args.prompts, seed=args.seed, sampling=sampling_overrides(painter, args.steps, args.guidance), device=device
        )
        cond = cascade.encode(args.prompts, first.final.pixels)
        second = cascade.run(cond, seed=args.seed, stop_at=args.stop_at, sampling=sampling, device=device)
        outputs = {f"image.{k}": v for k, v in first.outputs.items()} | second.outputs
    final = next(reversed(outputs.values()))
    # Everything was checked before sampling; each file is written atomically. A selector's output is the
    # output before it (the kept candidates): not written twice.
    for name, result in outputs.items():
        save = getattr(result, "save_all", None)
        if save is None or isinstance(cascade.stages.get(name), SelectorStage):
            continue
        for path in save(args.out, stem=name, force=True):
            print(path)
    if not args.no_preview and hasattr(final, "preview"):
        from cdm3d.render.preview import save_png

        for i in range(len(final)):
            print(save_png(final.preview(i), args.out / f"preview_{i}.png"))
    return 0


def _info(args: argparse.Namespace) -> int:
    from cdm3d.core import STAGES, Cascade
    from cdm3d.core.schedulers import scheduler_names

    print("stage types:", ", ".join(STAGES.names()) or "none")
    print("schedulers: ", ", ".join(scheduler_names()))
    if args.model is not None:
        cascade = Cascade.from_pretrained(args.model, load_clip=False)
        print(f"cascade {args.model}:")
        for name, stage in cascade.stages.items():
            params = sum(p.numel() for p in stage.parameters())
            print(f"  {name}: {stage.config.type}, {params / 1e6:.2f} M parameters, produces {stage.produces}")
            expert = getattr(stage, "expert", None)
            if expert is not None:
                params = sum(p.numel() for p in expert.parameters())
                print(f"    low-noise expert below timestep {stage.expert_switch}: {params / 1e6:.2f} M parameters")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="cdm3d", description="Cascaded diffusion across modalities: text/image -> points -> mesh, and images."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    _add_info(sub)
    _add_bench(sub)
    _add_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except Cdm3dError as err:
        if args.debug:
            raise
        print(one_line("cdm3d", err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cdm3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
