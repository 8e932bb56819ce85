"""A whole CT volume through ``predict``, per backend: seconds per volume and where they go.

A synthetic CT series (`write_series`: 100 axial DICOM slices of 512 x 512, int16 with a
rescale to HU; a body, lungs, a spine and a lesion in air) is written once under the scratch
folder. L-SNet (``configs/synthetic/lsnet_unet.yaml``, untrained, threshold 0 so that each slice
yields one RoI, as a slice with one target does; S-Net's mask bias raised so that each RoI's
mask is not empty and the DICOM SEG has a frame per slice) is exported once as a SavedModel and
as LiteRT float32 and int8 files (``lsnet_tf.export``; int8 calibrated on slices of the series).

Each backend then predicts the series as ``python -m lsnet_tf.predict --no-overlays`` does after
loading its model: ``lsnet_tf.inference.cases.predict_case`` (read the series, the model's HU
window and batched inference over the slices with the paste back to the slice grid, then the
NIfTI mask, the DICOM SEG and summary.json), timed end to end. The phases are told apart by the
progress callback that ``predict_volume`` calls before its first batch and after its last:
reading is the time before the first, inference the time between, writing the time after.
Inference alone is ``predict_volume`` on the volume already read (no progress bar). Before the
timed calls each backend predicts a two-slice series untimed (the model's first call, the
writers' imports); the model's loading is reported apart.

``TF_ENABLE_ONEDNN_OPTS`` is read when TensorFlow loads, so each round runs one child process
per setting (``python -m benchmarks.volume --child``), their order alternating from round to
round: the oneDNN-off child runs the SavedModel, the oneDNN-on child the SavedModel and both
LiteRT files (LiteRT does not use TensorFlow's kernels), in an order rotating from round to round.
The quick size (`--quick`) leaves out int8.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np

TITLE = ("A whole CT volume through predict (read, window, batched inference, paste, NIfTI and "
         "DICOM SEG), per backend: seconds per volume and where they go (CPU).")
CONFIG = "configs/synthetic/lsnet_unet.yaml"
SAVED_ON, SAVED_OFF = "SavedModel, oneDNN on", "SavedModel, oneDNN off"
LITERT_F32, LITERT_INT8 = "LiteRT float32", "LiteRT int8"
BACKENDS = (SAVED_ON, SAVED_OFF, LITERT_F32, LITERT_INT8)
FULL = dict(image=512, slices=100, rounds=3, batch=8, calibration=4, overrides=(),
            backends=BACKENDS)
# The quick size leaves out int8, whose conversion (calibration, quantization) is most of its
# time: LiteRT runs it as it runs float32.
QUICK = dict(image=64, slices=6, rounds=1, batch=4, calibration=1,
             overrides=("model.width=4", "model.decoder_width=8", "data.max_boxes=2"),
             backends=(SAVED_ON, SAVED_OFF, LITERT_F32))
CHILD_BACKENDS = {"1": (SAVED_ON, LITERT_F32, LITERT_INT8), "0": (SAVED_OFF,)}
PHASE_TARGET, LITERT_TARGET = 1.2, 0.6  # end to end / inference alone; LiteRT f32 / SavedModel
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_series(folder: str, slices: int, size: int, seed: int = 0) -> list[str]:
    """A synthetic axial CT series of `slices` slices of `size` x `size` in `folder` (files
    ``ct0000.dcm``, ...; 0.7 mm pixels, 2.5 mm slices): air, a body of soft tissue with a fat
    rim, lungs in the upper half, a spine and a round lesion over the middle slices, with noise;
    stored as int16 with RescaleIntercept -1024. Returns the paths."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        z = k / max(slices - 1, 1)  # 0 at the feet, 1 at the head
        body = (x / 0.42) ** 2 + (y / (0.30 - 0.04 * z)) ** 2
        hu = np.full((size, size), -1000.0, np.float32)
        hu[body < 1.0] = -100.0  # fat
        hu[body < 0.85] = 40.0  # soft tissue
        if z > 0.5:  # lungs
            for cx in (-0.18, 0.18):
                hu[((x - cx) / 0.13) ** 2 + ((y + 0.02) / 0.16) ** 2 < 1.0] = -850.0
        hu[((x / 0.05) ** 2 + ((y - 0.2) / 0.05) ** 2) < 1.0] = 700.0  # spine
        lesion = 0.08 * max(0.0, 1.0 - ((z - 0.5) / 0.25) ** 2) ** 0.5
        if lesion > 0:
            hu[(x - 0.1) ** 2 + (y + 0.05) ** 2 < lesion ** 2] = 90.0
        hu += rng.normal(0.0, 15.0, hu.shape).astype(np.float32)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.Modality = CTImageStorage, "CT"
        ds.PatientID, ds.PatientName = "BENCH001", "Benchmark^Volume"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "B1"
        ds.ReferringPhysicianName = "Ref^Doctor"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-0.35 * size, -0.35 * size, -200.0 + 2.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.Rows, ds.Columns = size, size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.clip(np.round(hu + 1024.0), -32768, 32767).astype(np.int16).tobytes()
        path = os.path.join(folder, f"ct{k:04d}.dcm")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _series(out: str, slices: int, image: int, seed: int = 0) -> str:
    """A series of `write_series`, written once under `out` (a marker file says it is
    complete)."""
    folder = os.path.join(out, f"series-{slices}x{image}-seed{seed}")
    marker = folder + ".complete"
    if not os.path.isfile(marker):
        write_series(folder, slices, image, seed)
        with open(marker, "w", encoding="utf-8") as f:
            f.write("written by benchmarks.volume.write_series\n")
    return folder


def export_models(out: str, size: dict, series: str) -> dict:
    """{backend: model path}: L-SNet of `CONFIG` at `size` (seed 0, threshold 0, S-Net's mask
    bias +4) as a SavedModel (both oneDNN settings load it) and LiteRT float32 and int8 files
    (int8 calibrated on `size["calibration"]` slices of `series`)."""
    import keras

    from lsnet_tf.config import load_config
    from lsnet_tf.export import saved_model, tflite
    from lsnet_tf.inference.readers import read_input
    from lsnet_tf.models.build import build_model

    image = size["image"]
    cfg = load_config(os.path.join(ROOT, CONFIG), [f"data.image_size={image}",
                                                   "train.strategy=default", *size["overrides"]])
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    model.threshold = 0.0
    head = model.snet.get_layer("mask_conv")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + 4.0])
    hu = read_input(series).hu
    picks = np.linspace(0, hu.shape[0] - 1, size["calibration"]).round().astype(int)
    calibration = [hu[k][None] for k in picks]
    paths = {}
    path = saved_model.export(model, cfg, os.path.join(out, "saved_model", "1"))
    paths[SAVED_ON] = paths[SAVED_OFF] = path
    for name, quantize in ((LITERT_F32, "none"), (LITERT_INT8, "int8")):
        if name not in size["backends"]:
            continue
        content = tflite.convert(model, cfg, quantize, representative=lambda: calibration)
        paths[name] = os.path.join(out, f"lsnet_{quantize}.tflite")
        with open(paths[name], "wb") as f:
            f.write(content)
    return paths


def _measure(predictor, series: str, out_dir: str, hu: np.ndarray) -> dict:
    """One end-to-end ``predict_case`` of `series` into `out_dir` with its phases, then
    ``predict_volume`` alone on `hu`; seconds."""
    from lsnet_tf.inference.cases import predict_case
    from lsnet_tf.inference.volume import predict_volume

    marks = {}

    def progress(done, total):
        marks["first" if done == 0 else "last"] = time.perf_counter()

    start = time.perf_counter()
    summary = predict_case(predictor, series, out_dir, overlays=False, progress=progress,
                           log=lambda *a, **k: None)
    end = time.perf_counter()
    alone_start = time.perf_counter()
    predict_volume(predictor, hu, progress=None)
    alone = time.perf_counter() - alone_start
    return {"end_to_end": end - start, "read": marks["first"] - start,
            "inference": marks["last"] - marks["first"], "write": end - marks["last"],
            "alone": alone, "mask_voxels": summary["mask_voxels"],
            "slices_with_mask": summary["slices_with_mask"], "dicom_seg": summary["dicom_seg_file"],
            "out": out_dir}


def child(spec: dict) -> dict:
    """In this process (TF_ENABLE_ONEDNN_OPTS already decided): each backend of
    ``spec["backends"]`` in that order, loaded, warmed up by an untimed ``predict_case`` of the
    two-slice series ``spec["warmup"]`` (the first call of the model and of the writers, whose
    imports a running service has done), then `_measure`d."""
    import lsnet_tf  # noqa: F401  (before TensorFlow: the command's environment)
    from tensorflow.python.util import _pywrap_util_port

    from lsnet_tf.inference.cases import predict_case
    from lsnet_tf.inference.predictors import load_predictor
    from lsnet_tf.inference.readers import read_input

    hu = read_input(spec["series"]).hu  # untimed: the files in the page cache, pydicom loaded
    results = {}
    for backend in spec["backends"]:
        start = time.perf_counter()
        predictor = load_predictor(spec["models"][backend], spec["batch"])
        load = time.perf_counter() - start
        folder = backend.replace(", ", "-").replace(" ", "-")
        predict_case(predictor, spec["warmup"], os.path.join(spec["out"], "warmup", folder),
                     overlays=False, progress=None, log=lambda *a, **k: None)
        out_dir = os.path.join(spec["out"], folder)
        results[backend] = {"load": load, **_measure(predictor, spec["series"], out_dir, hu)}
    return {"results": results, "onednn": bool(_pywrap_util_port.IsMklEnabled())}


def _spread(values) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def run(quick: bool = False) -> dict:
    from benchmarks import harness

    size = QUICK if quick else FULL
    out = harness.scratch_dir("volume", f"{size['image']}{'-quick' if quick else ''}")
    series = _series(out, size["slices"], size["image"])
    warmup = _series(out, 2, size["image"], seed=1)
    start = time.time()
    models = export_models(out, size, series)
    export_s = time.time() - start
    print(f"[volume] series and models ready ({export_s:.0f} s of export)", file=sys.stderr,
          flush=True)
    rows, outputs, measured = [], {}, {b: [] for b in size["backends"]}
    for r in range(size["rounds"]):
        settings = ("1", "0") if r % 2 == 0 else ("0", "1")
        got = {}
        for s in settings:
            names = tuple(b for b in CHILD_BACKENDS[s] if b in size["backends"])
            k = r % len(names)
            spec = {"series": series, "warmup": warmup, "models": models, "batch": size["batch"],
                    "backends": list(names[k:] + names[:k]), "out": os.path.join(out, "predict")}
            got.update(harness.onednn_child("benchmarks.volume", s, spec)["results"])
            print(f"[volume] round {r + 1}, oneDNN {'on' if s == '1' else 'off'}: " + ", ".join(
                f"{b} {got[b]['end_to_end']:.1f} s" for b in names), file=sys.stderr, flush=True)
        reference = got[SAVED_ON]["end_to_end"]
        for backend in size["backends"]:
            m = got[backend]
            measured[backend].append(m)
            outputs[backend] = m["out"]
            rows.append({"backend": backend, "round": r + 1,
                         "first": "oneDNN on" if settings[0] == "1" else "oneDNN off",
                         "end-to-end s": round(m["end_to_end"], 3),
                         "inference alone s": round(m["alone"], 3),
                         "read s": round(m["read"], 3), "inference s": round(m["inference"], 3),
                         "write s": round(m["write"], 3), "load s": round(m["load"], 3),
                         "end-to-end / inference": round(m["end_to_end"] / m["alone"], 3),
                         "/ SavedModel (oneDNN on)": round(m["end_to_end"] / reference, 3),
                         "slices with mask": m["slices_with_mask"]})

    def ratios(backend, key=None):
        return [m["end_to_end"] / (m["alone"] if key is None else key[i]["end_to_end"])
                for i, m in enumerate(measured[backend])]

    targets, notes = [], []
    for backend in (SAVED_ON, SAVED_OFF, LITERT_F32):
        values = ratios(backend)
        targets.append(harness.target(f"{backend}: end to end / inference alone",
                                      f"<= {PHASE_TARGET}", round(statistics.median(values), 3),
                                      statistics.median(values) <= PHASE_TARGET))
        notes.append(f"{backend}: end to end / inference alone over the rounds "
                     f"{_spread(values)}.")
    values = ratios(LITERT_F32, measured[SAVED_ON])
    targets.append(harness.target(f"{LITERT_F32} / {SAVED_ON}, end to end", f"<= {LITERT_TARGET}",
                                  round(statistics.median(values), 3),
                                  statistics.median(values) <= LITERT_TARGET))
    notes.append(f"{LITERT_F32} / {SAVED_ON}, end to end, over the rounds {_spread(values)}" + (
        f"; {LITERT_INT8}: {_spread(ratios(LITERT_INT8, measured[SAVED_ON]))}."
        if LITERT_INT8 in measured else "."))
    medians = {b: {k: statistics.median(m[k] for m in measured[b])
                   for k in ("end_to_end", "read", "inference", "write", "alone")}
               for b in size["backends"]}
    notes.append("Medians over the rounds, seconds per volume (read / inference / write of end "
                 "to end; inference alone): " + "; ".join(
                     f"{b} {v['end_to_end']:.2f} ({v['read']:.2f} / {v['inference']:.2f} / "
                     f"{v['write']:.2f}; {v['alone']:.2f})" for b, v in medians.items()) + ".")
    notes += [
        "End to end is lsnet_tf.inference.cases.predict_case as python -m lsnet_tf.predict "
        "--no-overlays runs it once the model is loaded (load s: loading the model, not in end "
        "to end); the phases are split at predict_volume's first and last progress callback, so "
        "read + inference + write = end to end; inference alone is predict_volume on the volume "
        "already read.",
        "Each oneDNN setting in its own process per round, the order alternating; the LiteRT "
        "files run in the oneDNN-on process with every usable core. Untrained weights "
        "(threshold 0: one RoI per slice; S-Net's mask bias raised: a mask in each RoI).",
    ]
    return {
        "title": TITLE,
        "settings": {"volume": f"{size['slices']} x {size['image']}x{size['image']}",
                     "batch": size["batch"], "rounds": size["rounds"],
                     "int8 calibration slices": size["calibration"],
                     "width": 4 if quick else 16, "export s": round(export_s, 1)},
        "rows": rows, "targets": targets, "notes": notes, "outputs": outputs,
        "volume_shape": [size["slices"], size["image"], size["image"]],
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m benchmarks volume (this module's --child is internal)")
