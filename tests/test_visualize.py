"""The data-flow figure is drawn from a model's own outputs."""
import numpy as np

from lsnet_tf import visualize


def test_dataflow_figure_from_a_run(tmp_path):
    """A run folder as the trainer writes it (config.yaml, a checkpoint of both networks), its
    model random with the heatmap head scaled so that RoIs are valid: training it would only
    change what the figure shows, not how it is drawn."""
    import keras
    import tensorflow as tf

    from lsnet_tf.config import load_config
    from lsnet_tf.models.build import build_model, checkpoint_objects

    run = tmp_path / "run"
    cfg = load_config(None, [
        "data.synthetic.num_patients=4", "data.synthetic.slices_per_patient=2",
        "data.synthetic.folds=2", "data.synthetic.image_size=64", "data.synthetic.max_target_size=30",
        "data.image_size=64", "data.batch_size=2", "model.width=4", "model.decoder_width=8",
        "data.max_boxes=2", f"data.cache_dir={tmp_path / 'cache'}", f"train.output_dir={run}"])
    run.mkdir()
    cfg.save(str(run / "config.yaml"))
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    head = model.lnet.get_layer("kp_logits")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 4.0, bias + 2.0])
    checkpoint = tf.train.Checkpoint(**checkpoint_objects(model, optimizers=False))
    tf.train.CheckpointManager(checkpoint, str(run / "checkpoints"), 1).save(1)
    out = tmp_path / "flow.png"
    assert visualize.main(["--run", str(run), "--out", str(out), "--slices", "2"]) == 0
    from PIL import Image
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 200 and img.shape[1] > 800 and img.std() > 10
