"""Export a trained run: ``python -m lsnet_tf.export --run DIR --format FORMAT --out PATH``.

FORMAT and where ``--out`` writes:

- ``saved_model``: the TF Serving SavedModel (``lsnet_tf.export.saved_model``) in
  ``OUT/<name>/<version>/`` (``--name``/``--version``, default ``export.name``/``export.version``
  of the run's config).
- ``tflite``: one ``.tflite`` file at OUT (``lsnet_tf.export.tflite``);
  ``--quantize none|fp16|int8`` (int8 calibrates on ``--calibration-slices`` training slices).
- ``tftrt``: the SavedModel converted with TF-TRT (``lsnet_tf.export.tftrt``) in
  ``OUT/<name>/<version>/``; ``--quantize none`` or ``fp16``. Needs a GPU and TensorRT:
  without them it stops at once with what is missing.

Several exported SavedModels as one SavedModel (their ensemble in one graph, for TF Serving):
``python -m lsnet_tf.export ensemble --model A --model B --out OUT`` (see ``ensemble --help``).

The run folder is one of ``python -m lsnet_tf.train``: its ``config.yaml`` rebuilds the model
and its latest checkpoint (or ``--checkpoint``) gives the weights (L-Net and S-Net, or a
baseline's networks; optimizer state is ignored). A run trained from a keras-hub preset
rebuilds its backbone from that preset, which must be reachable.

Exit status: 0 on success, 2 for bad arguments, 1 when the export fails.
Guide: docs/deployment.md (the SavedModel and TF Serving, TFLite and LiteRT, TF-TRT).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from lsnet_tf.config import ConfigError
from lsnet_tf.training.runs import RunError, load_run  # noqa: F401  (part of this module's API)

ENSEMBLE_DOC = """Several exported SavedModels as one SavedModel for TF Serving (an ensemble).

Written (``lsnet_tf.export.ensemble``) to ``OUT/<name>/<version>/`` with the signatures of one
member: the same inputs and outputs. Inside, every member runs on the slices (and on their
mirrors with ``--tta``); ``probability`` is the mean of the members' probability maps and
``mask`` that mean > 0.5, as ``python -m lsnet_tf.predict --model A --model B`` gives them;
``boxes``, ``keypoints``, ``scores`` and ``valid`` are the first member's. Members (``--model``,
repeated, or a folder of models) must share input size, HU window, classes and label;
``.tflite`` files run as an ensemble in ``predict`` only (LiteRT, member after member).
Exit status: 0 on success, 2 for bad arguments, 1 when the export fails.
Guide: docs/deployment.md ("One SavedModel for TF Serving").
"""

FORMATS = ("saved_model", "tflite", "tftrt")
QUANTIZE = ("none", "fp16", "int8")
_ALLOWED = {"saved_model": ("none",), "tflite": ("none", "fp16", "int8"), "tftrt": ("none", "fp16")}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lsnet_tf.export", description=__doc__,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog,
                                                                          max_help_position=30))
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="run folder of python -m lsnet_tf.train")
    parser.add_argument("--format", required=True, choices=FORMATS, metavar="FORMAT",
                        help=f"{', '.join(FORMATS[:-1])} or {FORMATS[-1]} (see above)")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="saved_model/tftrt: base folder (OUT/<name>/<version>); "
                             "tflite: the .tflite file")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE, metavar="Q",
                        help="none (default), fp16 or int8 (tflite); none or fp16 (tftrt)")
    parser.add_argument("--checkpoint", metavar="PREFIX",
                        help="checkpoint prefix (default: the run's latest)")
    parser.add_argument("--name", help="model name in the serving layout (default export.name)")
    parser.add_argument("--version", type=int, metavar="N",
                        help="model version (default export.version)")
    parser.add_argument("--calibration-slices", type=int, default=64, metavar="N",
                        help="training slices that calibrate int8 (default 64)")
    parser.add_argument("--allow-select-tf-ops", action="store_true",
                        help="tflite: allow TensorFlow ops (Flex delegate) besides the builtins")
    args = parser.parse_args(argv)
    if args.quantize not in _ALLOWED[args.format]:
        parser.error(f"--quantize {args.quantize} is not available for --format {args.format} "
                     f"(choose from {', '.join(_ALLOWED[args.format])})")
    if args.format == "tflite" and not args.out.endswith(".tflite"):
        parser.error("--format tflite writes one file: --out must end in .tflite, "
                     f"got {args.out!r}")
    if args.allow_select_tf_ops and args.format != "tflite":
        parser.error("--allow-select-tf-ops applies to --format tflite only")
    if args.calibration_slices < 1:
        parser.error(f"--calibration-slices must be >= 1, got {args.calibration_slices}")
    if args.version is not None and args.version < 1:
        parser.error(f"--version must be >= 1, got {args.version}")
    return args


def parse_ensemble_args(argv):
    """The arguments of ``python -m lsnet_tf.export ensemble`` (`argv` after ``ensemble``)."""
    parser = argparse.ArgumentParser(
        prog="python -m lsnet_tf.export ensemble", description=ENSEMBLE_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, action="append", metavar="PATH",
                        help="a member SavedModel (repeat for each) or a folder of them")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="base folder: writes OUT/<name>/<version>")
    parser.add_argument("--name", default="ensemble",
                        help="model name in the serving layout (default ensemble)")
    parser.add_argument("--version", type=int, default=1, metavar="N",
                        help="model version (default 1)")
    parser.add_argument("--tta", default="none", choices=("none", "flip", "flip2"),
                        help="mirrored views inside the graph, as predict's --tta "
                             "(default none)")
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error(f"--version must be >= 1, got {args.version}")
    return args


def run_ensemble(args, log=print) -> str:
    """Export the ensemble `args` describe (`parse_ensemble_args`); returns the written path."""
    from lsnet_tf.export import ensemble, saved_model  # TensorFlow: not for --help

    t0 = time.time()
    target = saved_model.serving_path(args.out, args.name, args.version)
    path = ensemble.export(args.model, target, tta=args.tta)
    views = ensemble.read_manifest(path)["views"]
    log(f"ensemble ({views} views) written to {path} in {time.time() - t0:.0f} s")
    return path


def run(args, log=print) -> str:
    """Export as `args` say (see `parse_args`); returns the written path."""
    # The exporters import TensorFlow: not at module level, so that --help and argument errors
    # answer at once.
    from lsnet_tf.export import saved_model, tflite, tftrt

    if args.format == "tftrt":  # fail before the minutes of loading and tracing
        tftrt.check_available()
    t0 = time.time()
    model, cfg, checkpoint = load_run(args.run, args.checkpoint)
    log(f"loaded {checkpoint} ({cfg.model.architecture}, {cfg.model.family} family, width "
        f"{cfg.model.width}, input {cfg.data.image_size} x {cfg.data.image_size})")
    if args.format == "tflite":
        path = tflite.export(model, cfg, args.out, quantize=args.quantize,
                             calibration_slices=args.calibration_slices,
                             allow_select_tf_ops=args.allow_select_tf_ops)
        log(f"TFLite ({args.quantize}) written to {path} ({os.path.getsize(path) / 1e6:.2f} MB) "
            f"in {time.time() - t0:.0f} s")
        return path
    target = saved_model.serving_path(args.out, args.name or cfg.export.name,
                                      args.version or cfg.export.version)
    if args.format == "saved_model":
        path = saved_model.export(model, cfg, target)
    else:
        path = tftrt.export(model, cfg, target,
                            precision="FP16" if args.quantize == "fp16" else "FP32")
    log(f"{args.format} written to {path} in {time.time() - t0:.0f} s")
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ensemble"]:
        args = parse_ensemble_args(argv[1:])
        try:
            run_ensemble(args)
        except (ValueError, OSError) as e:  # MemberError is a ValueError
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    args = parse_args(argv)
    from lsnet_tf.export.tflite import TFLiteConversionError  # TensorFlow: after parse_args
    from lsnet_tf.export.tftrt import TensorRTUnavailableError

    try:
        run(args)
    except (RunError, ConfigError, TensorRTUnavailableError, TFLiteConversionError,
            ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
