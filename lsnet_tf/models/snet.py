"""S-Net: the segmentation network of L-SNet, also the one-stage U-Net / Attention U-Net / FCN.

Input: ``(batch, H, W, 1)`` float in [0, 1] (in L-SNet, the RoI resampled by the RR module at
S-Net's input size; as a one-stage baseline, the whole windowed slice). Output: mask LOGITS
``(batch, H, W, num_classes)``, float32, at full input resolution; apply a sigmoid (one
independent binary mask per channel) before the losses of ``lsnet_tf.losses.segmentation``.

Families (decoders in ``lsnet_tf.models.decoders``):

- ``"unet"``: U-Net decoder from P5 back to stride 1 (skips P4, P3, P2 and the stem's P1; the
  last step upsamples to full size without a skip), then a 1x1 conv to ``num_classes``.
- ``"attention_unet"``: the same with an attention gate on each skip (Oktay et al., 2018).
- ``"fcn"``: FCN-8s: the ``num_classes`` scores of P3, P4, P5 summed at stride 8, then bilinear
  x8 upsampling to full size.

The paper uses ResNet34 for S-Net and for the one-stage baselines.
"""
from __future__ import annotations

import math

import keras
from keras import layers

from lsnet_tf.models.backbones import build_backbone, check_input_shape
from lsnet_tf.models.decoders import (check_family, fcn_decoder, resolve_decoder_width,
                                      unet_decoder)


def prior_bias(prior: float) -> float:
    """The logit of ``prior`` (in [0, 1)); 0 for a prior of 0, which stands for "no prior"."""
    if not 0 <= prior < 1:
        raise ValueError(f"mask_prior must lie in [0, 1), received {prior!r}")
    return 0.0 if prior == 0 else math.log(prior / (1.0 - prior))


def build_snet(input_shape=(None, None, 1), family: str = "unet", depth: int = 34, width: int = 64,
               num_classes: int = 1, decoder_width: int | None = None, preset: str = "",
               mask_prior: float = 0.0, name: str = "snet",
               synchronized: bool = False) -> keras.Model:
    """Build S-Net (or a one-stage baseline of the same family).

    Args:
        input_shape: ``(H, W, 1)``; H, W None or multiples of 32.
        family: ``"unet"``, ``"attention_unet"`` or ``"fcn"``.
        depth: ResNet depth of the encoder, 18 or 34.
        width: first-stack width of the ResNet (64 in ResNet18/34).
        num_classes: output channels (independent binary masks), >= 1.
        decoder_width: U-Net decoder channels at stride 4 (see
            ``lsnet_tf.models.decoders.decoder_channels``); unused by FCN. None or 0: ``width``.
        preset: keras-hub preset (name or folder) with ImageNet weights; "" = random init.
        mask_prior: prior probability pi of the output: the output layer's bias starts at
            ``prior_bias(pi) = log(pi / (1 - pi))`` (0: a zero bias, so the mask starts at 0.5).
        name: model name (``"unet"`` / ``"fcn"`` for the baselines, say).
        synchronized: build the BatchNormalization layers with ``synchronized=True`` (global-batch
            statistics over several replicas; ``train.sync_batch_norm``).

    Returns:
        ``keras.Model``: ``(batch, H, W, 1) -> (batch, H, W, num_classes)`` float32 logits (the
        output layer is named ``"logits"``).
    """
    check_family(family)
    shape = check_input_shape(input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, received {num_classes!r}")
    decoder_width = resolve_decoder_width(decoder_width, width)
    bias = keras.initializers.Constant(prior_bias(mask_prior))

    image = keras.Input(shape=shape, name="image")
    pyramid = build_backbone(depth=depth, width=width, preset=preset, input_shape=shape,
                             name=f"resnet{depth}_encoder", synchronized=synchronized)(image)
    if family == "fcn":
        scores = fcn_decoder(pyramid, out_stride=1, channels=num_classes, name="decoder",
                             bias_initializer=bias)
    else:
        feature = unet_decoder(pyramid, out_stride=1, decoder_width=decoder_width,
                               attention=family == "attention_unet", name="decoder",
                               synchronized=synchronized)
        scores = layers.Conv2D(num_classes, 1, bias_initializer=bias, name="mask_conv")(feature)
    logits = layers.Activation("linear", dtype="float32", name="logits")(scores)
    return keras.Model(image, logits, name=name)
