"""The data-flow figure is drawn from a model's own outputs."""
import numpy as np
import pytest

from lsnet_tf import visualize


@pytest.mark.slow
def test_dataflow_figure_from_a_run(tmp_path):
    from lsnet_tf.training import session
    from lsnet_tf.config import load_config
    from lsnet_tf.data import pipeline

    cfg = load_config(None, [
        "data.synthetic.num_patients=4", "data.synthetic.slices_per_patient=2",
        "data.synthetic.folds=2", "data.synthetic.image_size=64", "data.synthetic.max_target_size=30",
        "data.image_size=64", "data.batch_size=2", "model.width=4", "model.decoder_width=8",
        "data.max_boxes=2", f"data.cache_dir={tmp_path / 'cache'}", "train.strategy=default",
        f"train.output_dir={tmp_path / 'run'}", "export.dir=", "train.verbose=0", "train.epochs=1",
        "train.image_log_epochs=0"])
    session.run(cfg, log=lambda *_: None)
    out = tmp_path / "flow.png"
    assert visualize.main(["--run", str(tmp_path / "run"), "--out", str(out), "--slices", "2"]) == 0
    from PIL import Image
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 200 and img.shape[1] > 800 and img.std() > 10
