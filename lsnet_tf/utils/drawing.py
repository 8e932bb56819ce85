"""Drawing on slices with numpy (no plotting library): boxes outlined and masks tinted on a
gray image in [0, 1]. Used for the trainer's TensorBoard images and the overlays of
``python -m lsnet_tf.predict``."""
from __future__ import annotations

import numpy as np


def draw_boxes(image, boxes, valid, color=(1.0, 0.2, 0.2)):
    """image (H, W) in [0, 1] -> (H, W, 3) with xyxy `boxes` outlined where `valid`."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, -1).copy()
    h, w = image.shape
    for (x1, y1, x2, y2), ok in zip(boxes, valid):
        if not ok:
            continue
        x1, x2 = int(np.clip(np.floor(x1), 0, w - 1)), int(np.clip(np.ceil(x2) - 1, 0, w - 1))
        y1, y2 = int(np.clip(np.floor(y1), 0, h - 1)), int(np.clip(np.ceil(y2) - 1, 0, h - 1))
        rgb[y1, x1:x2 + 1] = color
        rgb[y2, x1:x2 + 1] = color
        rgb[y1:y2 + 1, x1] = color
        rgb[y1:y2 + 1, x2] = color
    return rgb


def display_window(hu: np.ndarray, window) -> np.ndarray:
    """HU mapped to [0, 1] for display by `window` = (center, width) HU."""
    center, width = window
    return np.clip((hu - (center - width / 2.0)) / width, 0.0, 1.0)


def overlay(image, mask, color=(0.1, 1.0, 0.1), alpha=0.5):
    """image (H, W) in [0, 1] -> (H, W, 3) with the pixels of ``mask > 0.5`` blended with `color`."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, -1)
    m = (mask > 0.5)[..., None]
    return np.where(m, (1 - alpha) * rgb + alpha * np.asarray(color), rgb)
