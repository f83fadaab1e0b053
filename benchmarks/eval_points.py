"""Evaluate the point stages of a cascade on the world's test prompts; write JSON (also: ``cdm3d eval``).

    bash tools/env.sh python benchmarks/eval_points.py --model cdm3d/weights/default \
        --classifier benchmarks/assets/classifier.safetensors --out benchmarks/results/points_eval.json

Add --upsampler-noaug PATH to report the conditioning-augmentation ablation (an upsampler
trained the same number of steps without augmentation, run on the same generated coarse clouds).
"""

from __future__ import annotations

import sys

from cdm3d.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
