"""``python -m lsnet_tf.prepare``: TCIA and MSD layouts end to end, bad input, atomic shards.

The CLI runs in-process through ``main(argv)``; one test runs it as ``python -m`` in a
subprocess and one kills a subprocess in the middle of a patient.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_rescale

from lsnet_tf import prepare
from lsnet_tf.data import records, volumes
from lsnet_tf.preparation.cases import patient_number
from test_dicom import (CT5N, GAP_SERIES, RTPLAN, copy_series, dicom_label_affine, tcia_slice,
                        write_nifti)

REPO = Path(__file__).resolve().parents[1]


def ct5n_by_z():
    """CT5N files sorted by z, their HU by pydicom, and a per-slice label pattern (z order)."""
    files = sorted(CT5N.iterdir(), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    hu = np.stack([apply_rescale(pydicom.dcmread(f).pixel_array, pydicom.dcmread(f)) for f in files])
    pattern = np.zeros((5, 16, 16), np.uint8)
    for k in range(5):
        pattern[k, 2:4 + k, 3 + k:7 + k] = 1
    return files, hu, pattern


def write_ct5n_label(path):
    """TCIA-style label (x, y, z) = (col, row, slice) for CT5N, slices in stored-file order."""
    files, _, pattern = ct5n_by_z()
    stored = sorted(CT5N.iterdir())  # file-name order: z decreasing
    index = {f.name: k for k, f in enumerate(files)}
    lab = np.stack([pattern[index[f.name]] for f in stored])  # (slice, row, col) in stored order
    return write_nifti(path, lab.transpose(2, 1, 0), dicom_label_affine(stored))


def read_shard(path):
    import tensorflow as tf

    out = []
    for ex in tf.data.TFRecordDataset(str(path)).map(records.parse):
        out.append({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in ex.items()})
    return out


def tcia_layout(root, patients):
    """patients: {number: (series_maker or None, write_label: bool)} -> (images, labels)."""
    images, labels = root / "Pancreas-CT", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for num, (make, with_label) in patients.items():
        folder = images / f"PANCREAS_{num:04d}"
        folder.mkdir()
        if make is not None:
            make(folder / "1.2.3-study" / "4.5.6-series")
        if with_label:
            write_ct5n_label(labels / f"label{num:04d}.nii.gz")
    return images, labels


def run_tcia(images, labels, out, *extra):
    return prepare.main(["tcia", "--images", str(images), "--labels", str(labels), "--out", str(out),
                         *extra])


# ---------------------------------------------------------------- TCIA known answers


def test_tcia_five_slice_series_gives_five_records_in_z_order(tmp_path, capsys):
    images, labels = tcia_layout(tmp_path, {1: (copy_series, True)})
    out = tmp_path / "ds"
    assert run_tcia(images, labels, out) == 0
    info = records.read_info(str(out))
    fold = info["fold_assignment"]["PANCREAS_0001"]
    shard = out / f"fold-{fold}" / "PANCREAS_0001.tfrecord"
    recs = read_shard(shard)
    _, hu, pattern = ct5n_by_z()
    assert len(recs) == 5
    assert [int(r["slice_index"]) for r in recs] == [0, 1, 2, 3, 4]
    for k, r in enumerate(recs):
        np.testing.assert_array_equal(r["image_hu"], hu[k])
        np.testing.assert_array_equal(r["mask"], pattern[k])
        np.testing.assert_allclose(r["spacing"], [0.488281, 0.488281, 2.5], rtol=1e-6)
        assert r["patient_id"] == b"PANCREAS_0001"
        np.testing.assert_array_equal(r["boxes"], records.boxes_from_mask(pattern[k]))
    assert info["source"] == "tcia" and info["folds"] == 4 and info["complete"] is True
    assert info["patients"][str(fold)] == ["PANCREAS_0001"]
    assert info["num_slices"] == {str(k): (5 if k == fold else 0) for k in range(4)}
    assert info["label_values"] == "nonzero" and info["label_values_found"] == [0, 1]
    assert info["command"]["args"]["folds"] == 4 and info["command"]["argv"][3] == "tcia"
    text = capsys.readouterr().out
    assert "[1/1] PANCREAS_0001" in text and "prepared 1 patients (5 slices)" in text


def test_flipped_row_direction_gives_the_same_records(tmp_path):
    def mirror(ds, i):  # the same anatomy stored with row direction (-1, 0, 0)
        px = ds.pixel_array
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ipp[0] + 15 * float(ds.PixelSpacing[1]), ipp[1], ipp[2]]
        ds.PixelData = np.ascontiguousarray(px[:, ::-1]).tobytes()

    images, labels = tcia_layout(tmp_path, {
        1: (copy_series, True), 2: (lambda d: copy_series(d, edit=mirror), True)})
    out = tmp_path / "ds"
    assert run_tcia(images, labels, out, "--folds", "2", "--seed", "3") == 0
    info = records.read_info(str(out))
    a, b = (read_shard(out / info["patient_details"][p]["shard"])
            for p in ("PANCREAS_0001", "PANCREAS_0002"))
    assert len(a) == len(b) == 5
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra["image_hu"], rb["image_hu"])
        np.testing.assert_array_equal(ra["mask"], rb["mask"])
        assert ra["mask"].sum() > 0


def test_real_tcia_slice_label_drawn_in_patient_coordinates(tmp_path):
    """explicit_VR-UN.dcm: PANCREAS_0001 with ImageOrientationPatient (1, 0, 0, 0, -1, 0)."""
    src = tcia_slice()
    ds = pydicom.dcmread(src)
    images, labels = tcia_layout(tmp_path, {1: (None, False)})
    series = images / "PANCREAS_0001" / "study" / "series"
    series.mkdir(parents=True)
    shutil.copy(src, series / "1-122.dcm")
    # label: the box x in [150, 250] mm, y in [-300, -200] mm, drawn on the stored voxel grid
    o = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    p0 = np.array([float(v) for v in ds.ImagePositionPatient])
    r, c = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    pos = p0 + c[..., None] * dc * o[:3] + r[..., None] * dr * o[3:]  # (row, col, xyz)
    inside = ((pos[..., 0] >= 150) & (pos[..., 0] <= 250) & (pos[..., 1] >= -300)
              & (pos[..., 1] <= -200)).astype(np.uint8)
    write_nifti(labels / "label0001.nii.gz", inside.T[..., None], dicom_label_affine([src]))
    out = tmp_path / "ds"
    assert run_tcia(images, labels, out, "--folds", "2") == 0
    (rec,) = read_shard(next(out.glob("fold-*/PANCREAS_0001.tfrecord")))
    raw_hu = apply_rescale(ds.pixel_array, ds)
    np.testing.assert_array_equal(rec["image_hu"], raw_hu[::-1])  # canonical: anterior at the top
    # canonical pixel (i, j) lies at x = j * dc, y = -511 * dr + i * dr
    ii, jj = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    x, y = jj * dc, -511 * dr + ii * dr
    expected = (x >= 150) & (x <= 250) & (y >= -300) & (y <= -200)
    np.testing.assert_array_equal(rec["mask"], expected)
    # same anatomy: the HU under the mask are the stored HU inside the drawn box
    np.testing.assert_array_equal(np.sort(rec["image_hu"][rec["mask"] > 0]),
                                  np.sort(raw_hu[inside > 0]))
    assert expected.sum() == inside.sum() > 1000


# ---------------------------------------------------------------- bad input


def _unreadable(d):
    copy_series(d)
    (d / "broken.dcm").write_bytes(b"not a DICOM file" * 10)


def _non_image(d):
    d.mkdir(parents=True)
    shutil.copy(RTPLAN, d / "plan.dcm")


def _mixed(d):
    copy_series(d)
    for f in GAP_SERIES.iterdir():
        shutil.copy(f, d / f.name)


def _gap(d):
    copy_series(d, files=sorted(GAP_SERIES.iterdir()))


def _empty(d):
    d.mkdir(parents=True)


def test_each_bad_patient_is_reported_and_the_others_prepared(tmp_path, capsys):
    images, labels = tcia_layout(tmp_path, {
        1: (copy_series, True), 2: (_unreadable, True), 3: (_non_image, True), 4: (_mixed, True),
        5: (copy_series, False), 6: (_empty, True), 7: (_gap, True), 8: (copy_series, True),
        9: (copy_series, True), 10: (copy_series, True)})
    # 8: label shifted 5 mm; 9: label with one slice too few; 10: label has a fractional value
    aff = dicom_label_affine(sorted(CT5N.iterdir()))
    shifted = aff.copy()
    shifted[:3, 3] += [5.0, 0.0, 0.0]
    write_nifti(labels / "label0008.nii.gz", np.zeros((16, 16, 5), np.uint8), shifted)
    write_nifti(labels / "label0009.nii.gz", np.zeros((16, 16, 4), np.uint8), aff)
    write_nifti(labels / "label0010.nii.gz", np.full((16, 16, 5), 0.25, np.float32), aff)
    write_ct5n_label(labels / "label0099.nii.gz")  # a label with no patient: a note
    out = tmp_path / "ds"
    assert run_tcia(images, labels, out, "--folds", "2") == 1
    captured = capsys.readouterr()
    info = records.read_info(str(out))
    # 2: a complete series beside a file that is not DICOM at all: prepared without it.
    assert sorted(info["patient_details"]) == ["PANCREAS_0001", "PANCREAS_0002"]
    assert info["complete"] is False
    failed = info["failed"]
    assert sorted(failed) == [f"PANCREAS_{n:04d}" for n in range(3, 11)]
    p = {n: str(images / f"PANCREAS_{n:04d}") for n in range(1, 11)}
    series = {n: os.path.join(p[n], "1.2.3-study", "4.5.6-series") for n in p}
    expect = {
        3: (os.path.join(series[3], "plan.dcm"), "not an image slice"),
        4: (p[4], "mixes 2 series"),
        5: (p[5], "no label file with number 5"),
        6: (p[6], "empty series"),
        7: (p[7], "gap in the series"),
        8: (str(labels / "label0008.nii.gz"), "5 mm from"),
        9: (str(labels / "label0009.nii.gz"), "shape (slice, row, col) (4, 16, 16)"),
        10: (str(labels / "label0010.nii.gz"), "must be integers"),
    }
    for n, (path, reason) in expect.items():
        msg = failed[f"PANCREAS_{n:04d}"]
        assert msg.startswith(path + ": ") and reason in msg, (n, msg)
        assert msg in captured.err and f"PANCREAS_{n:04d} (fold" in captured.out
    shards = sorted(s.name for s in out.glob("fold-*/*"))
    # no shard, complete or temporary, for the others
    assert shards == ["PANCREAS_0001.tfrecord", "PANCREAS_0002.tfrecord"]
    assert "prepared 2 patients (10 slices), skipped 0, failed 8" in captured.out
    broken = os.path.join(series[2], "broken.dcm")
    skipped = info["patient_details"]["PANCREAS_0002"]["skipped_files"]
    assert [path for path, _ in skipped] == [broken] and skipped[0][1].startswith("not DICOM")
    assert "PANCREAS_0002 (fold" in captured.out and "skipped 1 files" in captured.out
    assert "label0099.nii.gz" in " ".join(info["notes"])


def test_a_failure_mid_patient_leaves_no_shard(tmp_path, monkeypatch):
    images, labels = tcia_layout(tmp_path, {1: (copy_series, True), 2: (copy_series, True)})
    real = volumes.volume_records

    def failing(volume, pid, fold, label_values=None):
        for k, rec in enumerate(real(volume, pid, fold, label_values)):
            if pid == "PANCREAS_0002" and k == 3:
                raise RuntimeError("disk on fire")
            yield rec

    monkeypatch.setattr(volumes, "volume_records", failing)
    out = tmp_path / "ds"
    assert run_tcia(images, labels, out, "--folds", "2") == 1
    info = records.read_info(str(out))
    assert info["failed"] == {"PANCREAS_0002": f"{images / 'PANCREAS_0002'}: RuntimeError: disk on fire"}
    assert sorted(s.name for s in out.glob("fold-*/*")) == ["PANCREAS_0001.tfrecord"]
    assert len(read_shard(out / info["patient_details"]["PANCREAS_0001"]["shard"])) == 5


def test_an_interrupt_mid_patient_leaves_no_shard_and_stops(tmp_path, monkeypatch):
    images, labels = tcia_layout(tmp_path, {1: (copy_series, True), 2: (copy_series, True)})
    real = volumes.volume_records

    def interrupted(volume, pid, fold, label_values=None):
        for k, rec in enumerate(real(volume, pid, fold, label_values)):
            if pid == "PANCREAS_0002" and k == 2:
                raise KeyboardInterrupt
            yield rec

    monkeypatch.setattr(volumes, "volume_records", interrupted)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        run_tcia(images, labels, out, "--folds", "2")
    assert sorted(s.name for s in out.glob("fold-*/*")) == ["PANCREAS_0001.tfrecord"]
    assert not (out / records.INFO_FILE).exists()  # an interrupted run is not a dataset


@pytest.mark.slow
def test_killed_mid_patient_leaves_no_shard_under_its_final_name(tmp_path):
    images, labels = tcia_layout(tmp_path, {1: (copy_series, True)})
    out = tmp_path / "ds"
    script = textwrap.dedent(f"""
        import os, signal
        from lsnet_tf import prepare
        from lsnet_tf.data import records
        real = records.ShardWriter.write
        def write(self, rec):
            real(self, rec)
            if self.count == 3:
                self._writer.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        records.ShardWriter.write = write
        prepare.main(["tcia", "--images", {str(images)!r}, "--labels", {str(labels)!r},
                      "--out", {str(out)!r}, "--folds", "2"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(out.glob("fold-*/*.tfrecord")) == []
    assert len(list(out.glob("fold-*/*.tfrecord.tmp"))) == 1  # the partial file, never listed
    assert records.list_shards(str(out), range(2)) == []
    # a rerun needs --overwrite, which clears the partial file too
    assert run_tcia(images, labels, out, "--folds", "2") == 2
    assert run_tcia(images, labels, out, "--folds", "2", "--overwrite") == 0
    assert [p.name for p in out.glob("fold-*/*")] == ["PANCREAS_0001.tfrecord"]


# ---------------------------------------------------------------- folds, reruns, options


def test_patient_level_folds_are_disjoint_and_deterministic(tmp_path, capsys):
    images, labels = tcia_layout(tmp_path, {n: (copy_series, True) for n in range(1, 8)})
    out1, out2, out3 = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_tcia(images, labels, out1, "--folds", "3", "--seed", "5") == 0
    assert run_tcia(images, labels, out2, "--folds", "3", "--seed", "5") == 0
    assert run_tcia(images, labels, out3, "--folds", "3", "--seed", "6") == 0
    i1, i2, i3 = (records.read_info(str(o)) for o in (out1, out2, out3))
    per_fold = i1["patients"]
    everyone = [p for k in per_fold for p in per_fold[k]]
    assert sorted(everyone) == [f"PANCREAS_{n:04d}" for n in range(1, 8)]  # each once
    assert sorted(len(v) for v in per_fold.values()) == [2, 2, 3]
    for k, pids in per_fold.items():
        assert sorted(p.name for p in (out1 / f"fold-{k}").glob("*.tfrecord")) == \
            sorted(f"{p}.tfrecord" for p in pids)
        assert i1["num_slices"][k] == 5 * len(pids)
        for pid in pids:
            assert {int(r["slice_index"]) for r in read_shard(out1 / f"fold-{k}" / f"{pid}.tfrecord")} \
                == set(range(5))
    assert i2["patients"] == per_fold and i3["patients"] != per_fold
    assert "fold 0:" in capsys.readouterr().out


def test_existing_dataset_needs_overwrite_which_removes_stale_shards(tmp_path, capsys):
    images, labels = tcia_layout(tmp_path, {n: (copy_series, True) for n in range(1, 5)})
    out = tmp_path / "ds"
    assert run_tcia(images, labels, out, "--folds", "2", "--seed", "0") == 0
    before = {p.relative_to(out) for p in out.glob("fold-*/*.tfrecord")}
    assert run_tcia(images, labels, out, "--folds", "2", "--seed", "1") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_tcia(images, labels, out, "--folds", "2", "--seed", "1", "--overwrite") == 0
    after = {p.relative_to(out) for p in out.glob("fold-*/*.tfrecord")}
    assert len(after) == 4 and after != before  # moved patients are not left in their old fold
    info = records.read_info(str(out))
    assert {str(p) for p in after} == {d["shard"] for d in info["patient_details"].values()}


def test_series_uid_option_picks_one_series(tmp_path):
    images, labels = tcia_layout(tmp_path, {1: (_mixed, True)})
    uid = pydicom.dcmread(CT5N / "2062").SeriesInstanceUID
    out = tmp_path / "ds"
    assert run_tcia(images, labels, out, "--folds", "2", "--series-uid", uid) == 0
    details = records.read_info(str(out))["patient_details"]["PANCREAS_0001"]
    assert details["slices"] == 5 and len(details["skipped_files"]) == 4


def test_axial_only_skips_a_coronal_series_without_failing(tmp_path):
    def coronal(ds, i):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-72.2, -143.0 + 2.5 * i, 20.0]

    images, labels = tcia_layout(tmp_path, {1: (copy_series, True),
                                            2: (lambda d: copy_series(d, edit=coronal), True)})
    out = tmp_path / "ds"
    assert run_tcia(images, labels, out, "--folds", "2", "--axial-only") == 0
    info = records.read_info(str(out))
    assert list(info["patient_details"]) == ["PANCREAS_0001"]
    assert "not an axial series" in info["skipped"]["PANCREAS_0002"]


def test_usage_errors_exit_2(tmp_path, capsys):
    images, labels = tcia_layout(tmp_path, {1: (copy_series, True)})
    assert run_tcia(images, labels, tmp_path / "o", "--folds", "1") == 2
    assert run_tcia(images, labels, tmp_path / "o", "--label-values", "x") == 2
    assert run_tcia(images, tmp_path / "nolabels", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "--folds must be >= 2, got 1" in err and "comma-separated" in err and "nolabels" in err
    with pytest.raises(SystemExit):
        prepare.main(["tcia", "--images", str(images)])


def test_patient_number_matching():
    assert patient_number("PANCREAS_0012") == 12
    assert patient_number("label0012.nii.gz") == 12
    assert patient_number("label12.nii") == 12
    assert patient_number("notes") is None


# ---------------------------------------------------------------- MSD layout


def msd_case(root, name, labels_zyx, image_zyx, store="ras", shift_label_mm=0.0):
    """Write imagesTr/name.nii.gz and labelsTr/name.nii.gz from canonical (z, y, x) arrays with
    spacing (2, 0.8, 0.7) mm; `store` picks the storage order ('ras' or 'lps-zyx')."""
    s = np.array([2.0, 0.8, 0.7])  # (z, y, x) spacing
    nz, ny, nx = image_zyx.shape
    if store == "ras":  # array (x, y, z), x towards the right, y anterior: reverse x and y
        def stored(a):
            return a.transpose(2, 1, 0)[::-1, ::-1, :]
        aff = np.eye(4)
        aff[:3, :3] = np.diag([-s[2], -s[1], s[0]])
        aff[:3, 3] = [10.0 + (nx - 1) * s[2], -20.0 + (ny - 1) * s[1], 30.0]
    else:  # the canonical layout itself
        def stored(a):
            return a
        aff = np.eye(4)
        aff[:3, :3] = [[0, 0, s[2]], [0, s[1], 0], [s[0], 0, 0]]
        aff[:3, 3] = [10.0, -20.0, 30.0]
    write_nifti(root / "imagesTr" / f"{name}.nii.gz", stored(image_zyx), aff)
    laff = aff.copy()
    laff[:3, 3] += [shift_label_mm, 0, 0]
    write_nifti(root / "labelsTr" / f"{name}.nii.gz", stored(labels_zyx), laff)


def msd_arrays(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(-1000, 1000, size=(3, 20, 24)).astype(np.int16)
    labels = np.zeros((3, 20, 24), np.uint8)
    labels[:, 4:12, 5:15] = 1  # pancreas
    labels[1, 6:9, 8:11] = 2   # tumour, inside it
    labels[2, 15:18, 18:22] = 2
    return image, labels


@pytest.mark.parametrize("values,expected", [("2", (2,)), ("1", (1,)), ("1,2", (1, 2)), (None, (1, 2))])
def test_msd_label_values_choose_the_pixels(tmp_path, values, expected):
    root = tmp_path / "Task07_Pancreas"
    image, labels = msd_arrays(0)
    msd_case(root, "pancreas_001", labels, image, store="ras")
    msd_case(root, "pancreas_002", labels, image, store="lps-zyx")
    (root / "imagesTr" / "._pancreas_001.nii.gz").write_bytes(b"macOS resource fork")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "pancreas",
                                                              "2": "cancer"}}))
    out = tmp_path / "ds"
    argv = ["msd", "--root", str(root), "--out", str(out), "--folds", "2"]
    assert prepare.main(argv + (["--label-values", values] if values else [])) == 0
    info = records.read_info(str(out))
    assert info["source"] == "msd" and info["label_values_found"] == [0, 1, 2]
    assert info["label_values"] == (list(expected) if values else "nonzero")
    assert info["source_layout"]["task_labels"] == {"0": "background", "1": "pancreas", "2": "cancer"}
    for pid in ("pancreas_001", "pancreas_002"):  # both storage orders give the same records
        recs = read_shard(out / info["patient_details"][pid]["shard"])
        assert len(recs) == 3
        for k, r in enumerate(recs):
            np.testing.assert_array_equal(r["image_hu"], image[k])
            np.testing.assert_array_equal(r["mask"], np.isin(labels[k], expected))
            np.testing.assert_allclose(r["spacing"], [0.8, 0.7, 2.0], rtol=1e-6)


def test_msd_bad_pairs_are_reported(tmp_path, capsys):
    root = tmp_path / "msd"
    image, labels = msd_arrays(1)
    labels = np.minimum(labels, 1)  # this task's classes (dataset.json) are 0 and 1
    msd_case(root, "a", labels, image)
    msd_case(root, "b", labels, image, shift_label_mm=3.0)
    msd_case(root, "c", labels, image)
    os.remove(root / "labelsTr" / "c.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}}))
    out = tmp_path / "ds"
    assert prepare.main(["msd", "--root", str(root), "--out", str(out), "--label-values", "2"]) == 2
    assert "not labels of this task" in capsys.readouterr().err
    assert prepare.main(["msd", "--root", str(root), "--out", str(out), "--folds", "2",
                         "--label-values", "1"]) == 1
    info = records.read_info(str(out))
    assert info["notes"] == []
    assert list(info["patient_details"]) == ["a"]
    assert info["failed"]["b"].startswith(str(root / "labelsTr" / "b.nii.gz")) and \
        "3 mm from" in info["failed"]["b"]
    assert info["failed"]["c"].startswith(str(root / "imagesTr" / "c.nii.gz")) and \
        "no label file" in info["failed"]["c"]


def test_msd_label_value_found_nowhere_is_noted(tmp_path, capsys):
    root = tmp_path / "msd"
    image, labels = msd_arrays(2)
    msd_case(root, "a", labels, image)
    out = tmp_path / "ds"
    assert prepare.main(["msd", "--root", str(root), "--out", str(out), "--label-values", "3"]) == 0
    info = records.read_info(str(out))
    assert info["notes"][-1] == "label values [3] appear in no prepared patient"
    assert info["patient_details"]["a"]["slices_with_target"] == 0
    assert "note: label values [3]" in capsys.readouterr().out


# ---------------------------------------------------------------- as a program


@pytest.mark.slow
def test_python_dash_m_prepare(tmp_path):
    images, labels = tcia_layout(tmp_path, {1: (copy_series, True), 2: (copy_series, False)})
    out = tmp_path / "ds"
    proc = subprocess.run(
        [sys.executable, "-m", "lsnet_tf.prepare", "tcia", "--images", str(images), "--labels",
         str(labels), "--out", str(out), "--folds", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "PANCREAS_0002" in proc.stderr and "no label file with number 2" in proc.stderr
    assert "prepared 1 patients (5 slices), skipped 0, failed 1" in proc.stdout
    info = records.read_info(str(out))
    assert len(read_shard(out / info["patient_details"]["PANCREAS_0001"]["shard"])) == 5
