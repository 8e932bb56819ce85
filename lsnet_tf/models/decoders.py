"""Decoders that turn a ResNet feature pyramid into one feature map at a chosen stride.

Both take the pyramid dict of ``lsnet_tf.models.backbones.build_backbone``
(``{"P1": stride 2, ..., "P5": stride 32}``, NHWC symbolic tensors) and return one
``(batch, H / out_stride, W / out_stride, channels)`` tensor; they are functions that add layers
to a functional graph, and every layer gets a name under ``name`` so that two decoders can live
in one model.

Upsampling is bilinear x2 (``UpSampling2D(interpolation="bilinear")``, i.e. ``tf.image.resize``
with half-pixel centres), not a transposed convolution: it has no parameters, cannot produce the
checkerboard artefacts of strided transposed convolutions (Odena et al., 2016), and its sampling
grid is the project's centre-aligned one (output pixel centre (j + 0.5) maps to input (j + 0.5)/2),
so a decoder stride-s position (i, j) stays the input point ((j + 0.5) s, (i + 0.5) s). The two
3x3 convolutions after each merge learn what a transposed convolution would.

U-Net (Ronneberger et al., 2015) with a ResNet encoder: from P5, each step upsamples x2,
concatenates the pyramid level of the same stride (no skip at stride 1), and applies two 3x3
conv-BN-ReLU. Channels at stride s are ``max(4, decoder_width * s / STRIDE)``: with the default
decoder_width 64 that is 256, 128, 64, 32, 16 at strides 16, 8, 4, 2, 1 (the decoder widths of
common ResNet U-Nets), and ``decoder_width`` itself at stride ``STRIDE`` = 4, L-Net's output
stride (``lsnet_tf.config.STRIDE``).

Attention U-Net (Oktay et al., 2018): the same, with an additive attention gate on each skip,
gated by the upsampled decoder feature (the arrangement of MONAI's ``AttentionUnet``):
``alpha = sigmoid(BN(conv1x1(relu(BN(conv1x1(g)) + BN(conv1x1(x))))))``, skip ``x * alpha``.

FCN-8s (Long et al., 2015): linear 1x1 score convolutions on P3, P4, P5; the P5 score is
upsampled x2 and added to P4's, that sum upsampled x2 and added to P3's (stride 8), then the sum
is upsampled bilinearly to ``out_stride``.
"""
from __future__ import annotations

import math

from keras import layers

from lsnet_tf.config import STRIDE

FAMILIES = ("unet", "attention_unet", "fcn")


def decoder_channels(decoder_width: int, stride: int) -> int:
    """U-Net decoder channels at ``stride``: ``max(4, decoder_width * stride // STRIDE)``."""
    return max(4, decoder_width * stride // STRIDE)


def _check_pyramid(pyramid, levels, what) -> None:
    if not isinstance(pyramid, dict):
        raise ValueError(f"{what} needs the pyramid dict of build_backbone, received "
                         f"{type(pyramid).__name__}")
    missing = [k for k in levels if k not in pyramid]
    if missing:
        raise ValueError(f"{what} needs pyramid levels {list(levels)}; missing {missing} "
                         f"(received {sorted(pyramid)})")


def _check_positive_int(value, what, minimum=1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, received {value!r}")


def conv_bn_relu(x, filters: int, kernel_size: int = 3, name: str = "conv",
                 synchronized: bool = False):
    """``kernel_size`` conv (same padding, no bias) + BN + ReLU; layers ``{name}_conv|bn|relu``.
    `synchronized`: the BN layer's (Keras's ``BatchNormalization(synchronized=...)``)."""
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(synchronized=synchronized, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def attention_gate(skip, gate, inter_channels: int, name: str = "attention",
                   synchronized: bool = False):
    """Additive attention gate (Oktay et al., 2018) on ``skip``, gated by ``gate``.

    Args:
        skip: ``(batch, h, w, c)`` encoder feature.
        gate: ``(batch, h, w, c_g)`` decoder feature already upsampled to the skip's size.
        inter_channels: channels of the intermediate 1x1 projections.
        synchronized: of the BN layers (see ``conv_bn_relu``).

    Returns:
        ``(batch, h, w, c)``: ``skip * alpha`` with ``alpha`` in (0, 1) of shape
        ``(batch, h, w, 1)`` (layer ``{name}_alpha``).
    """
    g = layers.Conv2D(inter_channels, 1, use_bias=False, name=f"{name}_gate_conv")(gate)
    g = layers.BatchNormalization(synchronized=synchronized, name=f"{name}_gate_bn")(g)
    x = layers.Conv2D(inter_channels, 1, use_bias=False, name=f"{name}_skip_conv")(skip)
    x = layers.BatchNormalization(synchronized=synchronized, name=f"{name}_skip_bn")(x)
    a = layers.Activation("relu", name=f"{name}_relu")(layers.Add(name=f"{name}_add")([g, x]))
    a = layers.Conv2D(1, 1, use_bias=False, name=f"{name}_psi_conv")(a)
    a = layers.BatchNormalization(synchronized=synchronized, name=f"{name}_psi_bn")(a)
    a = layers.Activation("sigmoid", name=f"{name}_alpha")(a)
    return layers.Multiply(name=f"{name}_apply")([skip, a])


def unet_decoder(pyramid: dict, out_stride: int = STRIDE, decoder_width: int = 64,
                 attention: bool = False, name: str = "decoder", synchronized: bool = False):
    """U-Net decoder from P5 (stride 32) up to ``out_stride``.

    Args:
        pyramid: ``{"P1": (b, H/2, W/2, .), ..., "P5": (b, H/32, W/32, .)}``; P5 and the levels
            of strides ``out_stride .. 16`` (except stride 1, which has no skip) are used.
        out_stride: 1, 2, 4, 8 or 16; ``log2(32 / out_stride)`` upsampling steps.
        decoder_width: channels at stride ``STRIDE`` = 4 (see ``decoder_channels``).
        attention: gate each skip with ``attention_gate`` (Attention U-Net).
        name: prefix of the layer names (``{name}_up{s}``, ``{name}_s{s}_conv1``, ...).
        synchronized: of the BN layers (see ``conv_bn_relu``).

    Returns:
        ``(batch, H / out_stride, W / out_stride, decoder_channels(decoder_width, out_stride))``.
    """
    if out_stride not in (1, 2, 4, 8, 16):
        raise ValueError(f"out_stride must be one of 1, 2, 4, 8, 16, received {out_stride!r}")
    _check_positive_int(decoder_width, "decoder_width", 4)
    strides = [2 ** k for k in range(4, int(math.log2(out_stride)) - 1, -1)]  # 16, 8, ..., out
    levels = ["P5"] + [f"P{int(math.log2(s))}" for s in strides if s > 1]
    _check_pyramid(pyramid, levels, "unet_decoder")
    x = pyramid["P5"]
    for s in strides:
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up{s}")(x)
        channels = decoder_channels(decoder_width, s)
        if s > 1:
            skip = pyramid[f"P{int(math.log2(s))}"]
            if attention:
                skip = attention_gate(skip, x, max(4, channels // 2), name=f"{name}_s{s}_attention",
                                      synchronized=synchronized)
            x = layers.Concatenate(axis=-1, name=f"{name}_s{s}_concat")([x, skip])
        x = conv_bn_relu(x, channels, name=f"{name}_s{s}_conv1", synchronized=synchronized)
        x = conv_bn_relu(x, channels, name=f"{name}_s{s}_conv2", synchronized=synchronized)
    return x


def fcn_decoder(pyramid: dict, out_stride: int = 8, channels: int = 64, name: str = "fcn",
                bias_initializer="zeros"):
    """FCN-8s decoder: summed 1x1 scores of P3, P4, P5, upsampled bilinearly to ``out_stride``.

    Args:
        pyramid: the dict of ``build_backbone``; P3, P4 and P5 are used.
        out_stride: 1, 2, 4 or 8 (the sum lives at stride 8 and is upsampled by 8 / out_stride).
        channels: channels of the score maps; ``num_classes`` gives FCN-8s' class scores, a
            feature width gives a feature map for a head.
        name: prefix of the layer names (``{name}_score_p3``, ``{name}_up16``, ...).
        bias_initializer: of the P3 score's bias (P4's and P5's start at zero), hence the
            initial bias of the sum.

    Returns:
        ``(batch, H / out_stride, W / out_stride, channels)``, linear in the pyramid features.
    """
    if out_stride not in (1, 2, 4, 8):
        raise ValueError(f"out_stride must be one of 1, 2, 4, 8, received {out_stride!r}")
    _check_positive_int(channels, "channels")
    _check_pyramid(pyramid, ("P3", "P4", "P5"), "fcn_decoder")
    score = {k: layers.Conv2D(channels, 1, name=f"{name}_score_{k.lower()}",
                              bias_initializer=bias_initializer if k == "P3" else "zeros")(pyramid[k])
             for k in ("P5", "P4", "P3")}
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up16")(score["P5"])
    x = layers.Add(name=f"{name}_add16")([x, score["P4"]])
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up8")(x)
    x = layers.Add(name=f"{name}_add8")([x, score["P3"]])
    if out_stride < 8:
        x = layers.UpSampling2D(8 // out_stride, interpolation="bilinear",
                                name=f"{name}_up{out_stride}")(x)
    return x


def check_family(family) -> str:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, received {family!r}")
    return family


def decode(pyramid: dict, family: str, out_stride: int, decoder_width: int, name: str = "decoder",
           synchronized: bool = False):
    """The feature map of ``family``'s decoder at ``out_stride`` (``decoder_width`` channels for
    FCN, ``decoder_channels(decoder_width, out_stride)`` for the U-Nets; `synchronized`: of the
    U-Nets' BN layers, see ``conv_bn_relu``; FCN has none)."""
    check_family(family)
    if family == "fcn":
        return fcn_decoder(pyramid, out_stride=out_stride, channels=decoder_width, name=name)
    return unet_decoder(pyramid, out_stride=out_stride, decoder_width=decoder_width,
                        attention=family == "attention_unet", name=name,
                        synchronized=synchronized)


def resolve_decoder_width(decoder_width, width: int) -> int:
    """``decoder_width`` None or 0 (the config's "same as width") means ``width``."""
    if decoder_width in (None, 0):
        return width
    _check_positive_int(decoder_width, "decoder_width", 4)
    return decoder_width


__all__ = ["FAMILIES", "attention_gate", "check_family", "conv_bn_relu", "decode",
           "decoder_channels", "fcn_decoder", "resolve_decoder_width", "unet_decoder"]
