"""Draw L-SNet's data flow on validation slices from a trained run (one row per slice: input,
heatmap, box + margin, RoI, S-Net's mask, the mask through θ⁻¹), e.g.

  python -m lsnet_tf.visualize --run runs/default --out docs/dataflow.png --slices 4

Guide: docs/training.md ("The model").
"""
from __future__ import annotations

import argparse
import sys

from lsnet_tf.training.runs import load_run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lsnet_tf.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a training output folder (config.yaml + checkpoints/)")
    p.add_argument("--out", default="dataflow.png", help="the PNG to write (default: %(default)s)")
    p.add_argument("--slices", type=int, default=3,
                   help="slices to draw, one row each (default: %(default)s)")
    p.add_argument("--skip", type=int, default=0, help="validation batches to skip before drawing")
    args = p.parse_args(argv)
    from lsnet_tf.data import pipeline  # imports TensorFlow: not for --help
    from lsnet_tf.training.dataflow import dataflow_figure

    model, cfg, _ = load_run(args.run)
    _, val, *_ = pipeline.datasets_for(cfg)
    batch = next(iter(val.skip(args.skip)))
    print(dataflow_figure(model, batch, args.out, args.slices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
