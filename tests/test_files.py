"""lsnet_tf.utils.files: write-to-temporary-then-rename, and content fingerprints."""
import hashlib
import json
import os
import shutil

import pytest

from lsnet_tf.utils import files


def test_atomic_write_replaces_the_target_on_success(tmp_path):
    path = str(tmp_path / "out.json")
    files.write_text(path, "old")
    with files.atomic_write(path) as f:
        f.write("new")
        with open(path, encoding="utf-8") as g:  # the target is untouched while writing
            assert g.read() == "old"
    with open(path, encoding="utf-8") as f:
        assert f.read() == "new"
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_write_leaves_the_target_and_no_temporary_file_on_error(tmp_path):
    path = str(tmp_path / "out.bin")
    files.write_bytes(path, b"old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with files.atomic_write(path, "wb") as f:
            f.write(b"half of the new content")
            raise RuntimeError("interrupted")
    with open(path, "rb") as f:
        assert f.read() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
    # A target that did not exist is not created.
    with pytest.raises(TypeError):
        files.write_json(str(tmp_path / "new.json"), {"not JSON": object()})
    assert os.listdir(tmp_path) == ["out.bin"]


def test_write_json_creates_the_folder(tmp_path):
    path = str(tmp_path / "a" / "b.json")
    assert files.write_json(path, {"b": 1, "a": [2]}, sort_keys=True) == path
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text == json.dumps({"a": [2], "b": 1}, indent=2) and not text.endswith("\n")
    with pytest.raises(ValueError, match="mode must be"):
        with files.atomic_write(path, "a"):
            pass


def test_fingerprint_is_the_sha256_of_a_file_and_of_a_folder_s_paths_and_bytes(tmp_path):
    fingerprint = files.fingerprint
    (tmp_path / "m.tflite").write_bytes(b"\x00abc")
    assert fingerprint(str(tmp_path / "m.tflite")) == hashlib.sha256(b"\x00abc").hexdigest()

    model = tmp_path / "model"
    (model / "1" / "variables").mkdir(parents=True)
    (model / "1" / "saved_model.pb").write_bytes(b"graph")
    (model / "1" / "variables" / "variables.index").write_bytes(b"index")
    want = hashlib.sha256(b"1/saved_model.pb\0graph\0" + b"1/variables/variables.index\0index\0")
    assert fingerprint(str(model)) == want.hexdigest()
    shutil.copytree(model, tmp_path / "copy")  # the content, wherever it lies
    assert fingerprint(str(tmp_path / "copy")) == want.hexdigest()
    (model / "1" / "variables" / "variables.index").write_bytes(b"indeX")
    assert fingerprint(str(model)) != want.hexdigest()
    os.rename(tmp_path / "copy" / "1", tmp_path / "copy" / "2")  # another version number
    assert fingerprint(str(tmp_path / "copy")) != want.hexdigest()
