"""Sampling speed of point cascades, written as JSON (also: ``cdm3d bench``).

    # CPU, tiny geometry and the shipped default (minutes on 2 cores)
    bash tools/env.sh python benchmarks/bench_sampling.py --geometry tiny cdm3d/weights/default \
        --device cpu --batches 1 8 --out benchmarks/results/bench_sampling_cpu.json
    # GPU, Point-E's geometry with 64 + 64 Karras-Heun steps
    python benchmarks/bench_sampling.py --geometry pointe --device cuda --batches 1 8 32 64 \
        --compare --out benchmarks/results/bench_sampling_cuda.json

Per geometry: batch-1 latency per stage and end to end, throughput and peak
memory per batch size, the denoiser's sustained TFLOP/s and its fraction of the
card's dense bf16 peak. ``--compare`` also times fp32 eager against the
configured settings (bf16 autocast, and ``--compile``) in the same process.
"""

from __future__ import annotations

import sys

from cdm3d.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
