"""Build, compile, checkpoint and measure the model a config describes.

``model.architecture`` picks the model (``lsnet_tf.config.ARCHITECTURES``):

==================  ====================================  =========================================
architecture        class                                 networks (checkpoint keys)
==================  ====================================  =========================================
lsnet               ``lsnet.LSNet``                       lnet (lnet_depth), snet (snet_depth)
unet, fcn,          ``one_stage.OneStageSegmenter``       snet (snet_depth, snet_preset)
attention_unet
coarse_to_fine      ``cascades.CoarseToFine``             coarse (lnet_depth, lnet_preset), snet
lnet_crop           ``cascades.LNetCrop``                 lnet, snet
==================  ====================================  =========================================

Every network of a model uses ``model.family``'s decoder (for a one-stage model, family equals
the architecture), ``model.width`` and ``data.image_size``. Every network has its own Adam
optimizer with the config's step-decay schedule (``compile_model``), saved in checkpoints under
``<name>_optimizer`` (``checkpoint_objects``).
"""
from __future__ import annotations

from lsnet_tf.config import Config


def build_model(cfg: Config, synchronized: bool = False):
    """The model of `cfg.model` (see the module docstring), not yet compiled.

    With ``train.mixed_precision`` its layers are built under Keras's ``"mixed_float16"`` dtype
    policy (float16 compute, float32 variables); the networks' output layers are float32 either
    way, so losses and outputs stay float32. The global policy is restored afterwards.

    With `synchronized`, every BatchNormalization layer is built ``synchronized=True``: in
    training mode it normalises with the statistics of the global batch (summed over all
    replicas with an all-reduce) instead of its replica's share. ``lsnet_tf.train`` asks for it
    under several replicas when ``train.sync_batch_norm`` is on. Inference (moving statistics)
    is unchanged; on one device it only swaps TensorFlow's variance for Keras's E[x²] - E[x]²,
    so the trainer leaves it off there.
    """
    if not cfg.train.mixed_precision:
        return _build_model(cfg, synchronized)
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        return _build_model(cfg, synchronized)
    finally:
        keras.config.set_dtype_policy(previous)


def nested_layers(roots, layer_type) -> list:
    """Every layer of ``layer_type`` in ``roots`` (a layer or a list of them) and the models
    nested in them, depth first, each once (through the public ``layers`` of each)."""
    found, seen = [], set()
    stack = list(roots)[::-1] if isinstance(roots, (list, tuple)) else [roots]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, layer_type):
            found.append(layer)
        stack.extend((getattr(layer, "layers", None) or [])[::-1])
    return found


def batch_norm_layers(model) -> list:
    """Every BatchNormalization layer of a model of ``build_model``, in its networks and the
    models nested in them."""
    import keras

    return nested_layers(list(model_networks(model).values()), keras.layers.BatchNormalization)


def _build_model(cfg: Config, synchronized: bool = False):
    from lsnet_tf.models.cascades import CoarseToFine, LNetCrop
    from lsnet_tf.models.lnet import build_lnet
    from lsnet_tf.models.lsnet import LSNet
    from lsnet_tf.models.one_stage import OneStageSegmenter
    from lsnet_tf.models.snet import build_snet

    m = cfg.model
    margin = m.input_margin(cfg.data.image_size)  # model.margin in input pixels
    shape = (cfg.data.image_size, cfg.data.image_size, 1)
    dec = m.decoder_width or None
    common = dict(max_rois=cfg.data.max_boxes, threshold=m.threshold, loss_config=cfg.loss,
                  seed=cfg.train.seed)

    def snet(depth, preset, family, name):
        return build_snet(input_shape=shape, family=family, depth=depth, width=m.width,
                          num_classes=m.num_classes, decoder_width=dec, preset=preset,
                          mask_prior=m.mask_prior, name=name, synchronized=synchronized)

    def lnet():
        return build_lnet(input_shape=shape, family=m.family, depth=m.lnet_depth, width=m.width,
                          decoder_width=dec, preset=m.lnet_preset, synchronized=synchronized)

    if m.architecture == "lsnet":
        return LSNet(lnet(), snet(m.snet_depth, m.snet_preset, m.family, "snet"), margin=margin,
                     gamma=cfg.train.gamma, top_k=cfg.train.top_k, name="lsnet", **common)
    if m.one_stage:
        return OneStageSegmenter(
            snet(m.snet_depth, m.snet_preset, m.architecture, m.architecture),
            name=m.architecture, **common)
    second = snet(m.snet_depth, m.snet_preset, m.family, "snet")
    if m.architecture == "coarse_to_fine":
        return CoarseToFine(
            snet(m.lnet_depth, m.lnet_preset, m.family, "coarse"), second, margin=margin,
            train_crop=m.train_crop, crop_mode=m.crop_mode, name="coarse_to_fine", **common)
    if m.architecture == "lnet_crop":
        return LNetCrop(lnet(), second, margin=margin, train_crop=m.train_crop,
                        top_k=cfg.train.top_k, name="lnet_crop", **common)
    raise ValueError(f"model.architecture={m.architecture!r} is not buildable")


def model_networks(model) -> dict:
    """Name -> network of any model of ``build_model`` (``{"lnet", "snet"}`` for L-SNet)."""
    return dict(model.networks)


def model_optimizers(model) -> dict:
    """Name -> optimizer of each network of a compiled model (keys of ``model_networks``)."""
    return dict(model.optimizers)


def lr_schedule(cfg, steps_per_epoch: int):
    """x `lr_decay_factor` every `lr_decay_epochs` epochs (staircase), from `learning_rate`.

    Always a schedule object, whatever the number of epochs, so that a checkpoint's optimizer
    variables match when a run is resumed with more epochs.
    """
    import keras

    t = cfg.train
    return keras.optimizers.schedules.ExponentialDecay(
        t.learning_rate, decay_steps=t.lr_decay_epochs * max(1, steps_per_epoch),
        decay_rate=t.lr_decay_factor, staircase=True)


def compile_model(model, cfg: Config, steps_per_epoch: int) -> None:
    """Compile with one Adam per network, each on the config's step-decay learning rate
    (``lr_schedule``: x ``lr_decay_factor`` every ``lr_decay_epochs`` epochs).

    ``train.jit_compile`` is passed to ``keras.Model.compile`` (XLA for the train and test
    steps). Keras's automatic loss scaling is off: the models' train steps apply their gradients
    themselves and do not scale the loss (see ``build_model`` for ``train.mixed_precision``).
    """
    import keras

    def adam():
        return keras.optimizers.Adam(lr_schedule(cfg, steps_per_epoch))

    model.compile(optimizers={name: adam() for name in model.networks},
                  jit_compile=cfg.train.jit_compile, auto_scale_loss=False)


def checkpoint_objects(model, optimizers: bool = True) -> dict:
    """Keyword arguments of ``tf.train.Checkpoint`` for a model: its networks by name and, with
    `optimizers`, ``<name>_optimizer`` for each (for L-SNet: lnet, snet, lnet_optimizer,
    snet_optimizer, the keys the trainer has always written)."""
    objects = model_networks(model)
    if optimizers:
        objects.update({f"{n}_optimizer": opt for n, opt in model_optimizers(model).items()})
    return objects


def count_params(model) -> int:
    """Number of scalars in all of a model's weights (trainable and not, e.g. BN statistics)."""
    return int(sum(int(v.numpy().size) for v in model.weights))


def count_trainable_params(model) -> int:
    """Number of trainable scalars (what PyTorch's ``parameters()`` counts, as the paper does)."""
    return int(sum(int(v.numpy().size) for v in model.trainable_weights))


def parameter_counts(model, trainable: bool = False) -> dict:
    """``{network name: count, ..., "total": sum}`` with ``count_params`` (or, with
    `trainable`, ``count_trainable_params``)."""
    count = count_trainable_params if trainable else count_params
    counts = {name: count(net) for name, net in model_networks(model).items()}
    counts["total"] = sum(counts.values())
    return counts


def count_flops(network, input_shape) -> int:
    """Floating-point operations of one forward pass of a network on one image.

    Counted by TensorFlow's profiler (``tf.compat.v1.profiler``, ``float_operation``) on the
    network's inference graph (``training=False``) traced for a batch of 1 at `input_shape`
    ``(H, W, C)``, with the weights frozen to constants. The profiler counts a multiply and an
    add as two operations (a convolution: ``2 * k * k * C_in * C_out * H_out * W_out``), so
    FLOPs ~= 2 x MACs; it counts the ops that have a FLOP statistic in TensorFlow
    (convolutions, matmuls, element-wise arithmetic), not the memory-bound ones (resizes,
    gathers, pooling).
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)

    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (H, W, C) of positive ints, received {input_shape!r}")
    fn = tf.function(lambda x: network(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1,) + shape, tf.float32))
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(),
                                            cmd="op", options=options)
    return int(profile.total_float_ops)
