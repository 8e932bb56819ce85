"""Dense losses of L-SNet: focal, soft Dice, their sum (the paper's ℓ), and BCE for the ablation.

One convention throughout: ``y_prob`` holds PROBABILITIES in [0, 1] (apply a sigmoid to logits
first; L-Net's heatmap already is one), ``y_true`` targets in [0, 1] of the same shape
``(batch, H, W, C)`` (``focal_loss`` takes any shape; the per-sample and reduced losses any
``(batch, ...)`` of rank >= 2; ``soft_dice_loss``'s ``axis`` must match the rank). Everything is computed in float32 (inputs
are cast, so float16 / bfloat16 activations under mixed precision are fine) and probabilities are
clipped to ``[eps, 1 - eps]`` before any logarithm, so losses and gradients stay finite even for
saturated predictions (the gradient is zero where the clip is active).

The paper's loss (Eq. 5-6): ℓ = FocalLoss + 0.2 · DiceLoss, used for L-Net's heatmap and
S-Net's mask; ``focal_dice_loss`` computes ``mean focal + dice_weight · mean Dice``. Reduction
with ``sample_weight`` (shape ``(batch,)``, >= 0): the focal (or BCE) mean is
``sum_b w_b sum_e f_be / (sum_b w_b · E)`` over the ``E`` elements of each sample, the Dice mean
``sum_b w_b d_b / sum_b w_b``. A zero weight removes a sample (e.g. an image without a target
from the S-Net loss); when every weight is zero the loss is exactly 0 with zero gradients, never
NaN. ``segmentation_loss`` dispatches on ``lsnet_tf.config.LossConfig.kind``; ``per_sample_loss``
gives the ``(batch,)`` losses of a ``LossConfig`` for callers that reduce themselves (e.g. over
replicas).
"""
from __future__ import annotations

from keras import ops

LOSS_KINDS = ("focal_dice", "bce")


def _static_shape(x):
    try:
        return tuple(x.shape)
    except ValueError:  # unknown rank
        return None


def _as_float32(y_true, y_prob):
    """Cast both to float32 and check that their static shapes agree."""
    y_true = ops.cast(y_true, "float32")
    y_prob = ops.cast(y_prob, "float32")
    a, b = _static_shape(y_true), _static_shape(y_prob)
    if a is not None and b is not None and (
            len(a) != len(b) or any(x is not None and z is not None and x != z for x, z in zip(a, b))):
        raise ValueError(f"y_true and y_prob must have the same shape, received {a} and {b}")
    return y_true, y_prob


def _check_alpha_gamma(alpha, gamma) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], received {alpha!r}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, received {gamma!r}")


def focal_loss(y_true, y_prob, alpha: float = 0.25, gamma: float = 2.0, eps: float = 1e-6):
    """Binary focal loss (Lin et al., 2017) per element, no reduction.

    ``FL = -alpha · y · (1 - p)^gamma · log(p) - (1 - alpha) · (1 - y) · p^gamma · log(1 - p)``
    with ``p`` clipped to ``[eps, 1 - eps]``. For hard labels y in {0, 1} this is the paper's
    ``-alpha_t (1 - p_t)^gamma log(p_t)``; soft targets in between (e.g. Gaussian heatmaps) mix
    the two terms linearly. ``alpha`` weights the positives (0.25 with gamma = 2 in Lin et al.).

    Args:
        y_true: targets in [0, 1], any shape.
        y_prob: probabilities, same shape.

    Returns:
        float32 tensor of ``y_true``'s shape, >= 0.
    """
    _check_alpha_gamma(alpha, gamma)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), received {eps!r}")
    y_true, y_prob = _as_float32(y_true, y_prob)
    p = ops.clip(y_prob, eps, 1.0 - eps)
    positive = -alpha * y_true * ops.power(1.0 - p, gamma) * ops.log(p)
    negative = -(1.0 - alpha) * (1.0 - y_true) * ops.power(p, gamma) * ops.log(1.0 - p)
    return positive + negative


def soft_dice_loss(y_true, y_prob, axis=(1, 2, 3), smooth: float = 1.0):
    """Soft Dice loss per sample: ``1 - (2 Σ y p + smooth) / (Σ y + Σ p + smooth)``.

    Sums run over ``axis`` (default: H, W, C of ``(batch, H, W, C)``). ``smooth`` > 0 keeps the
    ratio defined when both masks are empty (loss 0 then) and is added to both numerator and
    denominator, so identical binary masks give exactly 0 and disjoint ones ``1 - smooth /
    (|Y| + |P| + smooth)``.

    Returns:
        float32 tensor ``(batch,)`` (the shape of ``y_true`` without ``axis``), in [0, 1).
    """
    if smooth <= 0:
        raise ValueError(f"smooth must be > 0, received {smooth!r}")
    y_true, y_prob = _as_float32(y_true, y_prob)
    p = ops.clip(y_prob, 0.0, 1.0)
    intersection = ops.sum(y_true * p, axis=axis)
    total = ops.sum(y_true, axis=axis) + ops.sum(p, axis=axis)
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def _sample_weight(sample_weight, batch_like):
    """``(batch,)`` float32 weights; ones when None."""
    if sample_weight is None:
        return ops.ones_like(batch_like)
    w = ops.cast(sample_weight, "float32")
    if len(w.shape) != 1:
        raise ValueError(f"sample_weight must have shape (batch,), received shape {tuple(w.shape)}")
    if w.shape[0] is not None and batch_like.shape[0] is not None and w.shape[0] != batch_like.shape[0]:
        raise ValueError(f"sample_weight must have shape (batch,) = ({batch_like.shape[0]},), "
                         f"received shape {tuple(w.shape)}")
    return w


def _weighted_mean(per_sample, sample_weight):
    """``Σ_b w_b x_b / Σ_b w_b`` of a ``(batch,)`` tensor; exactly 0 when all weights are 0."""
    w = _sample_weight(sample_weight, per_sample)
    return ops.divide_no_nan(ops.sum(w * per_sample), ops.sum(w))


def _per_sample_mean(per_element):
    """``(batch, ...) -> (batch,)`` mean over all but the first axis."""
    if len(per_element.shape) < 2:
        raise ValueError("the losses need batched inputs (batch, ...), received shape "
                         f"{tuple(per_element.shape)}")
    return ops.mean(per_element, axis=tuple(range(1, len(per_element.shape))))


def focal_dice_per_sample(y_true, y_prob, alpha: float = 0.25, gamma: float = 2.0,
                          dice_weight: float = 0.2, eps: float = 1e-6, smooth: float = 1.0):
    """Per-sample ℓ: ``mean_e focal + dice_weight · Dice``, float32 ``(batch,)``.

    Args:
        y_true: ``(batch, H, W, C)`` (or any ``(batch, ...)``) targets in [0, 1].
        y_prob: probabilities of the same shape.
        alpha, gamma, eps: of ``focal_loss``; smooth: of ``soft_dice_loss`` (over all non-batch
            axes); dice_weight: weight of the Dice term (0.2 in the paper), >= 0.
    """
    if dice_weight < 0:
        raise ValueError(f"dice_weight must be >= 0, received {dice_weight!r}")
    per_element = focal_loss(y_true, y_prob, alpha=alpha, gamma=gamma, eps=eps)
    focal = _per_sample_mean(per_element)
    dice = soft_dice_loss(y_true, y_prob, axis=tuple(range(1, len(per_element.shape))), smooth=smooth)
    return focal + dice_weight * dice


def bce_per_sample(y_true, y_prob, eps: float = 1e-7):
    """Per-sample mean binary cross-entropy on probabilities, float32 ``(batch,)``.

    ``-y log(p) - (1 - y) log(1 - p)`` with ``p`` clipped to ``[eps, 1 - eps]`` (eps = 1e-7 as
    ``keras.losses.binary_crossentropy``), averaged over all non-batch axes.
    """
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5), received {eps!r}")
    y_true, y_prob = _as_float32(y_true, y_prob)
    p = ops.clip(y_prob, eps, 1.0 - eps)
    return _per_sample_mean(-y_true * ops.log(p) - (1.0 - y_true) * ops.log(1.0 - p))


def focal_dice_loss(y_true, y_prob, alpha: float = 0.25, gamma: float = 2.0,
                    dice_weight: float = 0.2, sample_weight=None, eps: float = 1e-6,
                    smooth: float = 1.0):
    """The paper's ℓ: weighted mean focal loss + ``dice_weight`` · weighted mean soft Dice.

    Equals ``Σ_b w_b ℓ_b / Σ_b w_b`` with ``ℓ_b = focal_dice_per_sample(...)[b]``.

    Args:
        y_true: ``(batch, H, W, C)`` targets in [0, 1].
        y_prob: ``(batch, H, W, C)`` probabilities.
        alpha, gamma, eps: of ``focal_loss``.
        dice_weight: weight of the Dice term (0.2 in the paper), >= 0.
        sample_weight: optional ``(batch,)`` non-negative weights (see the module docstring).
        smooth: of ``soft_dice_loss``.

    Returns:
        float32 scalar; exactly 0 when all sample weights are 0.
    """
    per_sample = focal_dice_per_sample(y_true, y_prob, alpha=alpha, gamma=gamma,
                                       dice_weight=dice_weight, eps=eps, smooth=smooth)
    return _weighted_mean(per_sample, sample_weight)


def bce_loss(y_true, y_prob, sample_weight=None, eps: float = 1e-7):
    """Binary cross-entropy on probabilities, reduced like ``focal_dice_loss`` (the ablation):
    the weighted mean over the elements of weighted samples of ``bce_per_sample``.

    Returns:
        float32 scalar; exactly 0 when all sample weights are 0.
    """
    return _weighted_mean(bce_per_sample(y_true, y_prob, eps=eps), sample_weight)


def per_sample_loss(loss_cfg, y_true, y_prob):
    """Per-sample loss ``(batch,)`` float32 of a ``lsnet_tf.config.LossConfig``.

    ``kind == "focal_dice"``: ``focal_dice_per_sample`` with ``focal_alpha``, ``focal_gamma`` and
    ``dice_weight``; ``kind == "bce"``: ``bce_per_sample``. For reductions the caller controls
    (e.g. dividing by a count summed over replicas); ``segmentation_loss`` reduces it locally.
    """
    kind = getattr(loss_cfg, "kind", None)
    if kind == "focal_dice":
        return focal_dice_per_sample(y_true, y_prob, alpha=loss_cfg.focal_alpha,
                                     gamma=loss_cfg.focal_gamma, dice_weight=loss_cfg.dice_weight)
    if kind == "bce":
        return bce_per_sample(y_true, y_prob)
    raise ValueError(f"loss kind must be one of {', '.join(LOSS_KINDS)}, received {kind!r}")


def segmentation_loss(kind: str, y_true, y_prob, sample_weight=None, focal_alpha: float = 0.25,
                      focal_gamma: float = 2.0, dice_weight: float = 0.2):
    """Dispatch on ``LossConfig.kind``: ``"focal_dice"`` -> ``focal_dice_loss``, ``"bce"`` ->
    ``bce_loss`` (which ignores ``focal_alpha``, ``focal_gamma`` and ``dice_weight``).

    Call as ``segmentation_loss(cfg.kind, y, p, w, cfg.focal_alpha, cfg.focal_gamma,
    cfg.dice_weight)`` with ``cfg`` a ``lsnet_tf.config.LossConfig``. Returns a float32 scalar.
    """
    if kind == "focal_dice":
        return focal_dice_loss(y_true, y_prob, alpha=focal_alpha, gamma=focal_gamma,
                               dice_weight=dice_weight, sample_weight=sample_weight)
    if kind == "bce":
        return bce_loss(y_true, y_prob, sample_weight=sample_weight)
    raise ValueError(f"loss kind must be one of {', '.join(LOSS_KINDS)}, received {kind!r}")


__all__ = ["LOSS_KINDS", "bce_loss", "bce_per_sample", "focal_dice_loss", "focal_dice_per_sample",
           "focal_loss", "per_sample_loss", "segmentation_loss", "soft_dice_loss"]


def focal_loss_with_logits(y_true, logits, alpha: float = 0.25, gamma: float = 2.0):
    """``focal_loss`` computed from logits, with log-sigmoids instead of clipped logs.

    The same values as ``focal_loss(y_true, sigmoid(logits))`` where that is not clipped, but the
    gradient never vanishes through a clip: a probability saturated near 0 at a positive still
    gets a gradient of about ``-alpha`` on its logit, so a heatmap cannot collapse to all-zero
    and stay there.
    """
    _check_alpha_gamma(alpha, gamma)
    y_true = ops.cast(y_true, "float32")
    z = ops.cast(logits, "float32")
    p = ops.sigmoid(z)
    positive = -alpha * y_true * ops.power(1.0 - p, gamma) * ops.log_sigmoid(z)
    negative = -(1.0 - alpha) * (1.0 - y_true) * ops.power(p, gamma) * ops.log_sigmoid(-z)
    return positive + negative


def per_sample_loss_from_logits(loss_cfg, y_true, logits, focal_normalizer: str = "elements"):
    """``per_sample_loss`` from logits ``(batch, ...)``: the form the training step uses.

    ``focal_dice``: focal (from logits; summed and divided by the sample's number of positive
    elements, y > 0.5, at least 1, when ``focal_normalizer == "positives"``, else averaged) + ``dice_weight`` · soft Dice of ``sigmoid(logits)``;
    ``bce``: mean sigmoid cross-entropy from logits. Returns ``(batch,)`` float32.
    """
    y_true = ops.cast(y_true, "float32")
    z = ops.cast(logits, "float32")
    axes = tuple(range(1, len(y_true.shape)))
    if loss_cfg.kind == "bce":
        return ops.mean(_bce_with_logits(y_true, z), axis=axes)
    if loss_cfg.kind != "focal_dice":
        raise ValueError(f"loss kind must be 'focal_dice' or 'bce', received {loss_cfg.kind!r}")
    focal = focal_loss_with_logits(y_true, z, loss_cfg.focal_alpha, loss_cfg.focal_gamma)
    if focal_normalizer == "positives":
        positives = ops.sum(ops.cast(y_true > 0.5, "float32"), axis=axes)
        focal = ops.sum(focal, axis=axes) / ops.maximum(positives, 1.0)
    else:
        focal = ops.mean(focal, axis=axes)
    return focal + loss_cfg.dice_weight * soft_dice_loss(y_true, ops.sigmoid(z), axis=axes)


def _bce_with_logits(y_true, z):
    # softplus(-z) + (1 - y) * z = -y log sigmoid(z) - (1 - y) log sigmoid(-z), stable for any z,
    # and its gradient is sigmoid(z) - y everywhere (the max(z, 0) + log(1 + exp(-|z|)) form has
    # gradient -y at z = 0, where relu and abs have a zero subgradient).
    return ops.softplus(-z) + (1.0 - y_true) * z
