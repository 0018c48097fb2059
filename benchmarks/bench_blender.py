"""Fused blender vs reference: latency and peak memory against the instance count D.

Thin wrapper around :mod:`blendmask.bench` (same as ``blendmask bench``); see
``python benchmarks/bench_blender.py --help``. Writes benchmarks/results/blender_<device>.{json,png}.
"""
import sys

from blendmask.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
