"""L-Net: the localization network (anchor-free, CenterNet-style) of L-SNet.

Input: a windowed CT slice ``(batch, H, W, 1)``, float in [0, 1], H and W multiples of 32 (or
None in the model's input shape). The ResNet encoder downsamples five times (P5 at stride 32), the
decoder upsamples three times to stride ``STRIDE = 4``, and two heads read the stride-4 feature:

- ``"heatmap"``: ``(batch, H/4, W/4, 1)`` float32 probabilities in (0, 1) that a position is an
  object centre (keypoint). KP head: 3x3 conv-ReLU, then a 1x1 conv with its bias initialised to
  ``HEATMAP_PRIOR_BIAS = -2.19`` followed by a sigmoid. As in CenterNet (and the focal-loss
  prior of Lin et al., 2017), the heatmap then starts near sigmoid(-2.19) ~= 0.1 everywhere
  rather than 0.5, so the many background positions do not swamp the loss in the first steps.
- ``"ltrb"``: ``(batch, H/4, W/4, 4)`` float32 distances (left, top, right, bottom), in INPUT
  pixels, from a position's input-space point to the four edges of its box; non-negative. BBR
  head (paper, Sec. 2.1): two 3x3 conv-ReLU, then one 13x13 conv (a large receptive field for
  distance regression) giving ``raw``; ``ltrb = STRIDE * softplus(raw)``, so one unit of
  ``softplus(raw)`` is 4 input pixels (one feature cell) and ``raw = 0`` means 4 ln 2 ~= 2.77 px.

Centre-aligned sampling (a convention of the targets and of decoding, not of the network):
feature position (row i, column j) stands for the input point ``((j + 0.5) * 4, (i + 0.5) * 4)``
in pixel-edge coordinates (pixel (r, c) covers [c, c+1) x [r, r+1)). A keypoint at (i, j) with
distances (l, t, r, b) gives the box x1 = (j + 0.5) * 4 - l, y1 = (i + 0.5) * 4 - t,
x2 = (j + 0.5) * 4 + r, y2 = (i + 0.5) * 4 + b.

Families: ``"unet"`` (U-Net decoder with skips), ``"attention_unet"`` (with attention gates) and
``"fcn"`` (FCN-8s decoder; see ``lsnet_tf.models.decoders``). The paper uses ResNet18 for L-Net.
"""
from __future__ import annotations

import keras
from keras import layers

from lsnet_tf.config import STRIDE
from lsnet_tf.models.backbones import build_backbone, check_input_shape
from lsnet_tf.models.decoders import check_family, decode, resolve_decoder_width

# Output heads and their channels.
HEADS = {"heatmap": 1, "ltrb": 4}
# CenterNet's heatmap bias initialisation: sigmoid(-2.19) ~= 0.1.
HEATMAP_PRIOR_BIAS = -2.19
BBR_KERNEL_SIZE = 13


def build_lnet(input_shape=(None, None, 1), family: str = "unet", depth: int = 18, width: int = 64,
               decoder_width: int | None = None, preset: str = "", name: str = "lnet",
               synchronized: bool = False) -> keras.Model:
    """Build L-Net.

    Args:
        input_shape: ``(H, W, 1)``; H, W None or multiples of 32.
        family: ``"unet"``, ``"attention_unet"`` or ``"fcn"``.
        depth: ResNet depth of the encoder, 18 or 34.
        width: first-stack width of the ResNet (64 in ResNet18/34).
        decoder_width: channels of the stride-4 decoder feature and of the heads; None or 0 means
            ``width``.
        preset: keras-hub preset (name or folder) with ImageNet weights; "" = random init.
        name: model name.
        synchronized: build the BatchNormalization layers with ``synchronized=True`` (global-batch
            statistics over several replicas; ``train.sync_batch_norm``).

    Returns:
        ``keras.Model`` with input ``(batch, H, W, 1)`` and dict outputs
        ``{"heatmap": (batch, H/4, W/4, 1), "ltrb": (batch, H/4, W/4, 4)}`` (float32; see the
        module docstring for their meaning and units).
    """
    check_family(family)
    shape = check_input_shape(input_shape)
    decoder_width = resolve_decoder_width(decoder_width, width)

    image = keras.Input(shape=shape, name="image")
    pyramid = build_backbone(depth=depth, width=width, preset=preset, input_shape=shape,
                             name=f"resnet{depth}_encoder", synchronized=synchronized)(image)
    feature = decode(pyramid, family, out_stride=STRIDE, decoder_width=decoder_width,
                     name="decoder", synchronized=synchronized)

    kp = layers.Conv2D(decoder_width, 3, padding="same", activation="relu", name="kp_conv")(feature)
    kp = layers.Conv2D(HEADS["heatmap"], 1, name="kp_logits",
                       bias_initializer=keras.initializers.Constant(HEATMAP_PRIOR_BIAS))(kp)
    heatmap = layers.Activation("sigmoid", dtype="float32", name="heatmap")(kp)

    box = layers.Conv2D(decoder_width, 3, padding="same", activation="relu", name="bbr_conv1")(feature)
    box = layers.Conv2D(decoder_width, 3, padding="same", activation="relu", name="bbr_conv2")(box)
    box = layers.Conv2D(HEADS["ltrb"], BBR_KERNEL_SIZE, padding="same", name="bbr_raw")(box)
    box = layers.Activation("softplus", dtype="float32", name="bbr_softplus")(box)
    ltrb = layers.Rescaling(float(STRIDE), dtype="float32", name="ltrb")(box)

    logits = layers.Activation("linear", dtype="float32", name="heatmap_logits")(kp)
    return keras.Model(image, {"heatmap": heatmap, "heatmap_logits": logits, "ltrb": ltrb}, name=name)
