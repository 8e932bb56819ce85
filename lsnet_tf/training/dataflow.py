"""The data-flow figure of a trained L-SNet (``python -m lsnet_tf.visualize``).

One row per slice: the input with the ground-truth box, L-Net's heatmap, the predicted box (+ the
RR margin) on the input, the recalibrated RoI that S-Net sees, S-Net's mask on the RoI, and the
mask mapped back through θ⁻¹ over the input with the ground truth outlined. Every panel is the
code's own output.
"""
from __future__ import annotations

import numpy as np

__all__ = ["dataflow_figure"]


def dataflow_figure(model, batch, out_path: str, n: int = 3):
    """Draw the figure of `n` slices of a validation `batch` (the pipeline's dict) through an
    L-SNet `model` into the PNG `out_path`; returns `out_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    import tensorflow as tf

    # Prefer slices with a target, small and large ones alike.
    order = np.argsort(-batch["num_boxes"].numpy().clip(0, 1), kind="stable")[:n]
    images = tf.gather(batch["image"], order)
    pred = model.predict_masks(images)
    heat = pred["heatmap"].numpy()[..., 0]
    k = np.argmax(pred["scores"].numpy(), axis=1)  # best RoI of each slice
    rows = np.arange(len(order))
    kp = pred["keypoints"].numpy()[rows, k]
    boxes = pred["boxes"].numpy()[rows, k]
    valid = pred["valid"].numpy()[rows, k]
    dist = np.concatenate([kp - boxes[:, :2], boxes[:, 2:] - kp], -1)
    rois, theta = model.rr([images, tf.constant(kp), tf.constant(dist)])
    roi_prob = tf.sigmoid(model.snet(rois)).numpy()[..., 0]
    full = pred["mask"].numpy()[..., 0]
    m = model.margin
    titles = ["input + truth box", "L-Net heatmap (stride 4)", f"box + margin {m:g}px",
              "RoI (RR output)", "S-Net mask on RoI", "mask through θ⁻¹"]
    fig, axes = plt.subplots(len(order), 6, figsize=(15, 2.6 * len(order)), squeeze=False)
    for r, i in enumerate(order):
        img = images[r, ..., 0].numpy()
        truth = batch["mask"][i, ..., 0].numpy()
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
        for x1, y1, x2, y2 in batch["boxes"][i, : int(batch["num_boxes"][i])].numpy():
            axes[r, 0].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1))
        axes[r, 1].imshow(heat[r], cmap="magma", vmin=0, vmax=1)
        axes[r, 2].imshow(img, cmap="gray", vmin=0, vmax=1)
        if valid[r]:
            x1, y1, x2, y2 = boxes[r]
            axes[r, 2].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1))
            axes[r, 2].add_patch(Rectangle((x1 - m, y1 - m), x2 - x1 + 2 * m, y2 - y1 + 2 * m,
                                           fill=False, ec="orange", lw=1, ls="--"))
            axes[r, 2].plot(*kp[r], "r+", ms=8)
        axes[r, 3].imshow(rois[r, ..., 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 4].imshow(roi_prob[r] if valid[r] else np.zeros_like(roi_prob[r]), cmap="viridis", vmin=0, vmax=1)
        axes[r, 5].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[r, 5].imshow(np.ma.masked_less(full[r], 0.5), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        axes[r, 5].contour(truth, levels=[0.5], colors="lime", linewidths=0.8)
    fig.suptitle("L-SNet data flow: input → L-Net → RR → S-Net → θ⁻¹ → mask "
                 "(green: ground truth)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
