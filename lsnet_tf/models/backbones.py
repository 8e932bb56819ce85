"""ResNet18/34 encoders (keras-hub ``ResNetBackbone``) that turn a grayscale slice into a feature pyramid.

``build_backbone`` returns a ``keras.Model`` that maps a windowed CT slice
``(batch, H, W, 1)`` with values in ``[0, 1]`` to a dict of feature maps::

    level  stride  shape                          channels (width w = 64 in ResNet18/34)
    P1      2      (batch, H/2,  W/2,  c_stem)    stem conv 7x7/2 + BN + ReLU (before max-pool)
    P2      4      (batch, H/4,  W/4,  w)         stack 0 (after the 3x3/2 max-pool)
    P3      8      (batch, H/8,  W/8,  2w)        stack 1
    P4     16      (batch, H/16, W/16, 4w)        stack 2
    P5     32      (batch, H/32, W/32, 8w)        stack 3

Five 2x downsamplings in total (stem conv, max-pool, stacks 1-3), so H and W must be multiples of
32 for the levels to line up exactly when the decoders upsample by 2. keras-hub 0.31 exposes
P2..P5 as ``ResNetBackbone.pyramid_outputs``; P1 is the stem's ReLU output (layer
``conv{n}_relu``, n = number of stem convs), added here for decoders that go back to full
resolution. ``c_stem`` is w for the plain ResNet stem and the last stem conv's filters for the
ResNet-D ("vd") stems.

Grayscale input: the slice is repeated to three channels in the graph and normalised with the
ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), so the ImageNet stems of the
presets work unchanged. keras-hub does not normalise inside the backbone: its graph starts with
``conv1_pad`` / ``conv1_conv``, and the rescaling lives in the preset's ``ResNetImageConverter``
(the preprocessor, ``scale``/``offset`` per channel), which our models do not use. The same fixed
normalisation is applied with random initialisation, so a model's graph does not depend on where
its weights came from.

Architecture (as keras-hub's ResNet presets): stem conv 7x7 stride 2 with w filters, BN, ReLU,
zero-pad 1 + max-pool 3x3 stride 2; four stacks of basic blocks, [2, 2, 2, 2] (ResNet18) or
[3, 4, 6, 3] (ResNet34), with [w, 2w, 4w, 8w] filters and strides [1, 2, 2, 2]. At w = 64 the
backbone has 11,176,512 (ResNet18) and 21,284,672 (ResNet34) trainable parameters, the
torchvision counts without the 1000-way FC head.

keras-hub's ``ResNetBackbone`` accepts only w = 64. For other widths (small test and ablation
models) the same graph is built from keras-hub's own stack function with the same layer names;
a test checks that at w = 64 it matches ``ResNetBackbone`` layer for layer.

Presets: ``preset`` is a keras-hub preset name or a local preset folder, loaded with
``ResNetBackbone.from_preset``. keras-hub 0.31 ships ``resnet_18_imagenet`` (plain ResNet18) but
no plain ResNet34; its ImageNet ResNet34 is ``resnet_vd_34_imagenet`` (ResNet-D: three-conv stem,
average-pool shortcuts), accepted here since its pyramid has the same strides and widths.
"""
from __future__ import annotations

import keras

STACKWISE_NUM_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
PYRAMID_STRIDES = {"P1": 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}
# Total downsampling factor of the encoder: the input size must be a multiple of it.
MAX_STRIDE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_input_shape(input_shape, what: str = "input_shape") -> tuple:
    """Validate a model input shape ``(H, W, 1)``; H and W may be None, else multiples of 32."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"{what} must be a tuple (H, W, 1), received {input_shape!r}") from None
    if len(shape) != 3 or shape[-1] != 1:
        raise ValueError(f"{what} must be (H, W, 1) for a grayscale slice, received {input_shape!r}")
    for size in shape[:2]:
        if size is not None and (not isinstance(size, int) or size <= 0 or size % MAX_STRIDE):
            raise ValueError(f"{what}: H and W must be None or positive multiples of {MAX_STRIDE} "
                             f"(five 2x downsamplings), received {input_shape!r}")
    return shape


def _check_depth_width(depth, width) -> None:
    if depth not in STACKWISE_NUM_BLOCKS:
        raise ValueError(f"depth must be 18 or 34, received {depth!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 4:
        raise ValueError(f"width must be an integer >= 4, received {width!r}")


def _stack_filters(width: int) -> list:
    return [width, 2 * width, 4 * width, 8 * width]


def _keras_hub_resnet(depth: int, width: int = 64):
    """keras-hub's ``ResNetBackbone`` (random init); keras-hub requires ``width == 64``."""
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[width],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=_stack_filters(width),
        stackwise_num_blocks=list(STACKWISE_NUM_BLOCKS[depth]),
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        use_pre_activation=False,
        name=f"resnet{depth}",
    )


def _generic_resnet(depth: int, width: int) -> keras.Model:
    """The graph of ``ResNetBackbone`` at any width: ``(batch, H, W, 3) -> dict P1..P5``.

    Same layers and names as keras-hub's constructor (stem padding, 7x7/2 conv without bias, BN
    with epsilon 1e-5 and momentum 0.9, ReLU, pad + 3x3/2 max-pool, then keras-hub's
    ``apply_stack``), for the widths keras-hub's constructor refuses.
    """
    from keras import layers
    from keras_hub.src.models.resnet.resnet_backbone import apply_stack

    image = layers.Input(shape=(None, None, 3))
    x = layers.ZeroPadding2D(3, name="conv1_pad")(image)
    x = layers.Conv2D(width, 7, strides=2, use_bias=False, padding="valid", name="conv1_conv")(x)
    x = layers.BatchNormalization(axis=-1, epsilon=1e-5, momentum=0.9, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    pyramid = {"P1": x}
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for i, (filters, blocks, stride) in enumerate(
            zip(_stack_filters(width), STACKWISE_NUM_BLOCKS[depth], (1, 2, 2, 2))):
        x = apply_stack(x, filters=filters, blocks=blocks, stride=stride, block_type="basic_block",
                        use_pre_activation=False, first_shortcut=i > 0, name=f"stack{i}")
        pyramid[f"P{i + 2}"] = x
    return keras.Model(image, pyramid, name=f"resnet{depth}")


def _pyramid_model(backbone, name: str) -> keras.Model:
    """``keras.Model`` from a keras-hub ``ResNetBackbone``'s input to its pyramid P1..P5."""
    stem_relu = f"conv{len(backbone.input_conv_filters)}_relu"
    pyramid = {"P1": backbone.get_layer(stem_relu).output, **backbone.pyramid_outputs}
    missing = sorted(set(PYRAMID_STRIDES) - set(pyramid))
    if missing:
        raise ValueError(f"backbone {backbone.name!r} lacks pyramid levels {missing} "
                         f"(has {sorted(pyramid)})")
    return keras.Model(backbone.inputs, {k: pyramid[k] for k in PYRAMID_STRIDES}, name=name)


def _preset_resnet(preset: str, depth: int, width: int):
    import keras_hub

    # image_shape overrides a fixed size a preset's config may carry: the model fixes it instead.
    backbone = keras_hub.models.ResNetBackbone.from_preset(preset, image_shape=(None, None, 3))
    blocks = tuple(backbone.stackwise_num_blocks)
    if blocks != STACKWISE_NUM_BLOCKS[depth]:
        raise ValueError(f"preset {preset!r} has stackwise_num_blocks {list(blocks)}, not those of "
                         f"ResNet{depth} {list(STACKWISE_NUM_BLOCKS[depth])}")
    if backbone.block_type not in ("basic_block", "basic_block_vd") or backbone.use_pre_activation:
        raise ValueError(f"preset {preset!r} is a {backbone.block_type!r} ResNet"
                         f"{'V2' if backbone.use_pre_activation else ''}; ResNet18/34 need "
                         "'basic_block' or 'basic_block_vd' without pre-activation")
    if list(backbone.stackwise_num_filters) != _stack_filters(width):
        raise ValueError(f"preset {preset!r} has stackwise_num_filters "
                         f"{list(backbone.stackwise_num_filters)}; width must match the preset "
                         f"(received width={width})")
    return backbone


def _synchronized(resnet: keras.Model) -> keras.Model:
    """`resnet` with every BatchNormalization layer built ``synchronized=True`` (Keras: in
    training mode, normalise with the statistics of the global batch, all-reduced over the
    replicas): a ``keras.models.clone_model`` that rebuilds each BN layer from its config with
    ``synchronized=True`` and its weights (a preset's statistics included), and keeps every
    other layer (the same layer, the same weights). keras-hub builds the ResNet's BN layers
    itself, without a ``synchronized`` argument."""
    pairs = []

    def clone(layer):
        if not isinstance(layer, keras.layers.BatchNormalization):
            return layer
        copy = keras.layers.BatchNormalization.from_config(
            {**layer.get_config(), "synchronized": True})
        pairs.append((layer, copy))
        return copy

    synced = keras.models.clone_model(resnet, clone_function=clone)
    for layer, copy in pairs:
        copy.set_weights(layer.get_weights())
    return synced


def build_backbone(depth: int = 18, width: int = 64, preset: str = "",
                   input_shape=(None, None, 1), name: str | None = None,
                   synchronized: bool = False) -> keras.Model:
    """ResNet encoder of a grayscale slice with pyramid outputs.

    Args:
        depth: 18 or 34 (basic blocks [2, 2, 2, 2] or [3, 4, 6, 3]).
        width: filters of the first stack (64 in ResNet18/34); the stacks double it.
        preset: keras-hub preset name (e.g. ``"resnet_18_imagenet"``) or local preset folder
            with ImageNet weights; ``""`` builds a randomly initialised network. A preset fixes
            the width (it must equal the preset's first stack, 64 for the ImageNet presets).
        input_shape: ``(H, W, 1)``; H and W None (any multiple of 32) or multiples of 32.
        name: model name; default ``"resnet{depth}_encoder"``.
        synchronized: build every BatchNormalization layer with ``synchronized=True`` (the
            statistics of the global batch over several replicas; ``train.sync_batch_norm``).

    Returns:
        ``keras.Model`` mapping ``(batch, H, W, 1)`` float in [0, 1] to
        ``{"P1": (batch, H/2, W/2, c), ..., "P5": (batch, H/32, W/32, 8 * width)}``
        (strides in ``PYRAMID_STRIDES``). Inside, the image is repeated to 3 channels (layer
        ``to_rgb``), normalised with the ImageNet mean/std (layer ``imagenet_normalize``) and
        passed to the ResNet (a nested model named ``resnet{depth}``).
    """
    _check_depth_width(depth, width)
    shape = check_input_shape(input_shape)
    if not isinstance(preset, str):
        raise ValueError(f"preset must be a string (preset name or folder), received {preset!r}")
    if preset:
        resnet = _pyramid_model(_preset_resnet(preset, depth, width), f"resnet{depth}")
    elif width == 64:
        resnet = _pyramid_model(_keras_hub_resnet(depth, width), f"resnet{depth}")
    else:
        resnet = _generic_resnet(depth, width)
    if synchronized:
        resnet = _synchronized(resnet)

    gray = keras.Input(shape=shape, name="image")
    rgb = keras.layers.Concatenate(axis=-1, name="to_rgb")([gray, gray, gray])
    rgb = keras.layers.Normalization(
        axis=-1, mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD],
        name="imagenet_normalize")(rgb)
    return keras.Model(gray, resnet(rgb), name=name or f"resnet{depth}_encoder")
