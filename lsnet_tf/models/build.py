"""Build the model a config describes."""
from __future__ import annotations

from lsnet_tf.config import Config


def build_model(cfg: Config):
    """The L-SNet of `cfg.model` (L-Net, RR, S-Net), not yet compiled."""
    from lsnet_tf.models.lnet import build_lnet
    from lsnet_tf.models.lsnet import LSNet
    from lsnet_tf.models.snet import build_snet

    m = cfg.model
    if m.architecture != "lsnet":
        raise ValueError(f"model.architecture={m.architecture!r}: only 'lsnet' is built by build_model")
    shape = (cfg.data.image_size, cfg.data.image_size, 1)
    dec = m.decoder_width or None
    lnet = build_lnet(input_shape=shape, family=m.family, depth=m.lnet_depth, width=m.width,
                      decoder_width=dec, preset=m.lnet_preset)
    snet = build_snet(input_shape=shape, family=m.family, depth=m.snet_depth, width=m.width,
                      num_classes=m.num_classes, decoder_width=dec, preset=m.snet_preset)
    return LSNet(lnet, snet, margin=m.margin, gamma=cfg.train.gamma, top_k=cfg.train.top_k,
                 max_rois=cfg.data.max_boxes, threshold=cfg.loss.tau, loss_config=cfg.loss,
                 gt_box_epochs=cfg.train.gt_box_epochs, seed=cfg.train.seed, name="lsnet")


def count_params(model) -> int:
    return int(sum(int(v.numpy().size) for v in model.weights))
