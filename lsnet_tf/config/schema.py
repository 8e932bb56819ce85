"""The configuration's sections: frozen dataclasses with their defaults and their checks.

A config has five sections, ``model``, ``data``, ``loss``, ``train`` and ``export``; each field's
default is the value a run uses unless a YAML file or ``--set`` overrides it (see
``lsnet_tf.config.loading``). Every run saves its resolved config as ``config.yaml`` beside its
outputs.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml

from lsnet_tf.utils.files import is_remote, write_text


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the source."""


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The embedded synthetic dataset of CT-like slices (see lsnet_tf.data.synthetic)."""

    num_patients: int = 40
    slices_per_patient: int = 16
    image_size: int = 128
    # Target diameter range in pixels, drawn log-uniformly: spans the scale-variation problem.
    min_target_size: float = 4.0
    max_target_size: float = 64.0
    # Fractions of slices with no target and with two targets.
    empty_fraction: float = 0.1
    two_target_fraction: float = 0.15
    # Standard deviation of the HU noise; the target differs from its surroundings by contrast_hu.
    noise_hu: float = 20.0
    contrast_hu: float = 60.0
    folds: int = 5
    seed: int = 0
    # "standard": the set above, where the target is the one bright blob in the soft tissue.
    # "hard": finding the target is the problem, as with the pancreas. The target, of
    # hard_min_target_size to hard_max_target_size pixels (log-uniform), hard_contrast_hu over
    # soft tissue, always lies in a context region (soft tissue between the kidneys, in front of
    # the vertebra); hard_lookalikes_min to hard_lookalikes_max unlabelled blobs of the same HU
    # and size distribution lie in the soft tissue outside it, so only the context tells them
    # apart. min/max_target_size and contrast_hu apply to the standard preset only; noise_hu,
    # empty_fraction and two_target_fraction to both.
    preset: str = "standard"
    hard_min_target_size: float = 2.0
    hard_max_target_size: float = 32.0       # a quarter of the 128 px slice (at most that)
    hard_contrast_hu: float = 25.0
    hard_lookalikes_min: int = 1
    hard_lookalikes_max: int = 4

    # The settings of the standard preset: the only ones its data and its cache key depend on.
    STANDARD_FIELDS = ("num_patients", "slices_per_patient", "image_size", "min_target_size",
                       "max_target_size", "empty_fraction", "two_target_fraction", "noise_hu",
                       "contrast_hu", "folds", "seed")

    def settings(self) -> dict:
        """The settings the generated data depends on (its cache key and dataset.json): the
        standard preset's as they were before presets existed, every field for the others."""
        values = dataclasses.asdict(self)
        if self.preset == "standard":
            return {k: values[k] for k in self.STANDARD_FIELDS}
        return values

    def validate(self) -> None:
        _check(self.preset in ("standard", "hard"), "data.synthetic.preset must be standard or hard",
               self.preset)
        _check(self.num_patients >= 2, "data.synthetic.num_patients must be >= 2", self.num_patients)
        _check(self.slices_per_patient >= 1, "data.synthetic.slices_per_patient must be >= 1",
               self.slices_per_patient)
        _check(self.image_size >= 16, "data.synthetic.image_size must be >= 16", self.image_size)
        if self.preset == "standard":
            _check(0 < self.min_target_size <= self.max_target_size < self.image_size,
                   "data.synthetic needs 0 < min_target_size <= max_target_size < image_size",
                   (self.min_target_size, self.max_target_size, self.image_size))
        else:
            _check(0 < self.hard_min_target_size <= self.hard_max_target_size <= self.image_size / 4,
                   "data.synthetic needs 0 < hard_min_target_size <= hard_max_target_size <= "
                   "image_size / 4 (the largest target that fits the context region)",
                   (self.hard_min_target_size, self.hard_max_target_size, self.image_size))
            _check(0 <= self.hard_lookalikes_min <= self.hard_lookalikes_max,
                   "data.synthetic needs 0 <= hard_lookalikes_min <= hard_lookalikes_max",
                   (self.hard_lookalikes_min, self.hard_lookalikes_max))
        _check(0 <= self.empty_fraction + self.two_target_fraction <= 1,
               "data.synthetic.empty_fraction + two_target_fraction must lie in [0, 1]",
               (self.empty_fraction, self.two_target_fraction))
        _check(2 <= self.folds <= self.num_patients, "data.synthetic.folds must be in [2, num_patients]",
               self.folds)


# L-Net's output stride s: a heatmap cell covers s x s input pixels and stands for the input point
# ((j + 0.5)·s, (i + 0.5)·s). The one constant of the L-Net decoder (lsnet_tf.models.lnet), its
# targets (lsnet_tf.data.targets) and its loss (lsnet_tf.losses.localization); data.stride must
# equal it.
STRIDE = 4


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # A dataset folder written by `python -m lsnet_tf.prepare`; empty means the synthetic dataset.
    dataset: str = ""
    # Where the synthetic dataset is generated once and reused.
    cache_dir: str = "cache/synthetic"
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    # Network input size; slices are resized to image_size x image_size.
    image_size: int = 128
    # HU window applied in-graph (records hold raw HU): default is an abdominal soft-tissue window.
    window_center: float = 40.0
    window_width: float = 400.0
    val_fold: int = 0
    batch_size: int = 8
    shuffle_buffer: int = 256
    augment: bool = True
    # Deterministic order and augmentation (slower: no parallel nondeterminism).
    deterministic: bool = False
    # A corrupt TFRecord shard (CRC mismatch, truncation): "error" stops with a message naming the
    # shard; "skip" checks every shard before training, reports the corrupt ones and trains on
    # the records before each corruption (a corrupt validation shard is an error either way).
    on_corrupt: str = "error"
    # Heatmap: output stride and Gaussian sigma; sigma <= 0 means size-adaptive (CenterNet radius).
    stride: int = STRIDE
    heatmap_sigma: float = 0.0
    min_overlap: float = 0.7
    max_boxes: int = 8

    def validate(self) -> None:
        self.synthetic.validate()
        _check(self.image_size % 32 == 0, "data.image_size must be a multiple of 32 (five 2x downsamplings)",
               self.image_size)
        _check(self.window_width > 0, "data.window_width must be > 0", self.window_width)
        _check(self.batch_size >= 1, "data.batch_size must be >= 1", self.batch_size)
        _check(self.stride == STRIDE, f"data.stride must be {STRIDE} (L-Net's output stride)",
               self.stride)
        _check(0 < self.min_overlap < 1, "data.min_overlap must lie in (0, 1)", self.min_overlap)
        _check(self.max_boxes >= 1, "data.max_boxes must be >= 1", self.max_boxes)
        _check(self.val_fold >= 0, "data.val_fold must be >= 0", self.val_fold)
        _check(self.on_corrupt in ("error", "skip"), "data.on_corrupt must be error or skip",
               self.on_corrupt)


ARCHITECTURES = ("lsnet", "unet", "attention_unet", "fcn", "coarse_to_fine", "lnet_crop")
ONE_STAGE_ARCHITECTURES = ("unet", "attention_unet", "fcn")
FAMILIES = ("unet", "attention_unet", "fcn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # "lsnet": L-Net + RR + S-Net (the paper's model). Baselines (lsnet_tf.models.one_stage and
    # lsnet_tf.models.cascades):
    # "unet", "attention_unet", "fcn": one-stage S-Net on the whole image (family must match);
    # "coarse_to_fine": a coarse segmentation network, a hard crop of its mask's box, S-Net;
    # "lnet_crop": L-Net as the first stage with a hard crop instead of RR (Tables 2 and 3).
    architecture: str = "lsnet"
    # Encoder-decoder family of every network of the model: "unet", "attention_unet" or "fcn".
    family: str = "unet"
    # ResNet depth of the first stage (L-Net, or the coarse network of coarse_to_fine) and of the
    # second stage (S-Net; also the one-stage baselines' network).
    lnet_depth: int = 18
    snet_depth: int = 34
    # Channels of the first ResNet stage (64 in ResNet18/34); the stages double it.
    width: int = 64
    decoder_width: int = 0  # 0: same as width
    num_classes: int = 1
    # RR border margin m (Eq. 3); also the crop border of the crop baselines. In input pixels
    # when margin_reference is 0; otherwise in pixels of a margin_reference x margin_reference
    # slice, scaled to data.image_size: margin 15 with margin_reference 512 is the paper's 15 px
    # on a 512 x 512 slice, 3.75 input pixels at data.image_size 128. input_margin() gives the
    # value the built model uses.
    margin: float = 15.0
    margin_reference: int = 0
    # Inference threshold of the first stage (Sec. 2.5): L-Net's heatmap cells above it are
    # keypoints; for the coarse-to-fine and one-stage models, mask pixels above it give boxes.
    threshold: float = 0.5
    # keras-hub preset (name or local folder) for ImageNet weights of the first-stage and the
    # second-stage (or one-stage) backbone; "" = random initialisation.
    lnet_preset: str = ""
    snet_preset: str = ""
    # Crop baselines (coarse_to_fine, lnet_crop): the box the second stage is trained on,
    # "truth" (the ground-truth box, standard for coarse-to-fine training) or "predicted" (the
    # first stage's box, no gradient; ground truth while train.gt_box_epochs lasts).
    train_crop: str = "truth"
    # coarse_to_fine: boxes from the coarse mask, "union" (one box around the whole mask, as the
    # fixed-point model of Zhou et al. 2017) or "components" (one box per connected component).
    crop_mode: str = "union"
    # Prior probability pi of the mask heads' output layer (every segmentation network: S-Net,
    # the one-stage baselines, the coarse network): its bias starts at log(pi / (1 - pi)), so
    # the masks start near pi everywhere instead of 0.5 (the prior initialisation of Lin et al.,
    # 2017, that L-Net's heatmap head already uses). 0: a zero bias (masks start at 0.5).
    mask_prior: float = 0.0

    @property
    def one_stage(self) -> bool:
        return self.architecture in ONE_STAGE_ARCHITECTURES

    def input_margin(self, image_size: int) -> float:
        """The margin in input pixels for a model of input size `image_size`: ``margin`` when
        ``margin_reference`` is 0, else ``margin * image_size / margin_reference``."""
        if self.margin_reference == 0:
            return float(self.margin)
        return float(self.margin) * image_size / self.margin_reference

    def validate(self) -> None:
        _check(self.architecture in ARCHITECTURES,
               f"model.architecture must be one of {', '.join(ARCHITECTURES)}", self.architecture)
        _check(self.family in FAMILIES, f"model.family must be one of {', '.join(FAMILIES)}",
               self.family)
        _check(not self.one_stage or self.family == self.architecture,
               "model.family must equal model.architecture for a one-stage baseline "
               "(set both, e.g. architecture: fcn and family: fcn)",
               (self.architecture, self.family))
        _check(self.lnet_depth in (18, 34), "model.lnet_depth must be 18 or 34", self.lnet_depth)
        _check(self.snet_depth in (18, 34), "model.snet_depth must be 18 or 34", self.snet_depth)
        _check(self.width >= 4, "model.width must be >= 4", self.width)
        _check(self.num_classes >= 1, "model.num_classes must be >= 1", self.num_classes)
        _check(self.margin >= 0, "model.margin must be >= 0", self.margin)
        _check(self.margin_reference >= 0,
               "model.margin_reference must be 0 (model.margin in input pixels) or the size in "
               "pixels of the slice model.margin is given on (e.g. 512)", self.margin_reference)
        _check(0 <= self.threshold < 1, "model.threshold must lie in [0, 1)", self.threshold)
        _check(self.train_crop in ("truth", "predicted"),
               "model.train_crop must be truth or predicted", self.train_crop)
        _check(self.crop_mode in ("union", "components"),
               "model.crop_mode must be union or components", self.crop_mode)
        _check(0 <= self.mask_prior < 1, "model.mask_prior must lie in [0, 1) (0: a zero bias)",
               self.mask_prior)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # "focal_dice" (the paper's: focal + dice_weight * Dice) or "bce" (the ablation).
    kind: str = "focal_dice"
    # Focal weight of the target class (1 - alpha weighs the background), in every focal term:
    # masks and L-Net's heatmap. The paper's value is lost. Lin et al.'s 0.25 (tuned for anchors
    # in detection) weighs the target three times less than the background; with it one-stage
    # U-Nets sat for up to 13 of 36 epochs with nothing above 0.5 (docs/experiments.md, "What we
    # tried against the plateau"). 0.75 weighs the target three times more.
    focal_alpha: float = 0.75
    focal_gamma: float = 2.0
    # The heatmap's focal loss per image: summed over cells and divided by the number of positive
    # cells (Y > 0.5; "positives", as Lin et al. 2017 normalise by the assigned anchors) or
    # averaged over cells ("elements").
    heatmap_focal_normalizer: str = "positives"
    # The same choice for the masks' focal loss (every model's segmentation loss): averaged over
    # pixels ("elements") or summed and divided by the image's target pixels ("positives").
    mask_focal_normalizer: str = "elements"
    dice_weight: float = 0.2
    # Heatmap positives for the box loss: Y > tau.
    tau: float = 0.5
    box_weight: float = 1.0

    def validate(self) -> None:
        _check(self.kind in ("focal_dice", "bce"), "loss.kind must be focal_dice or bce", self.kind)
        _check(0 <= self.focal_alpha <= 1, "loss.focal_alpha must lie in [0, 1]", self.focal_alpha)
        _check(self.focal_gamma >= 0, "loss.focal_gamma must be >= 0", self.focal_gamma)
        _check(self.heatmap_focal_normalizer in ("positives", "elements"),
               "loss.heatmap_focal_normalizer must be positives or elements",
               self.heatmap_focal_normalizer)
        _check(self.mask_focal_normalizer in ("positives", "elements"),
               "loss.mask_focal_normalizer must be positives or elements",
               self.mask_focal_normalizer)
        _check(0 <= self.tau < 1, "loss.tau must lie in [0, 1)", self.tau)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    # 0: one pass over the training split per epoch.
    steps_per_epoch: int = 0
    # Initial learning rate (lost from the paper's text; 1e-4 is our default) and its step decay.
    learning_rate: float = 1e-4
    lr_decay_epochs: int = 25
    lr_decay_factor: float = 0.1
    # Scale of the gradient from S-Net's loss into L-Net through RR (0 blocks it).
    gamma: float = 0.1
    # Keypoint chosen at random among the top-k of each image for the S-Net step.
    top_k: int = 3
    # Epochs at the start during which ground-truth boxes stand in for predicted RoIs (0 = off).
    gt_box_epochs: int = 0
    # "auto": multi-worker when TF_CONFIG is set, mirrored over the GPUs when there are several,
    # else the default (single-device) strategy; or "mirrored", "multi_worker", "default".
    strategy: str = "auto"
    # Over several replicas, batch norm normalises with the statistics of the global batch
    # (all-reduced every step), as one device would; false: each replica its own share.
    sync_batch_norm: bool = True
    seed: int = 0
    output_dir: str = "runs/default"
    # The validation pass of fit (every loss term and the DSC of the validation fold, in the logs
    # and TensorBoard) every N epochs and after the last epoch; eval.json evaluates the final
    # model on the validation fold whatever N is.
    eval_every: int = 5
    # TensorBoard images every N epochs (0 = never).
    image_log_epochs: int = 5
    verbose: int = 1
    # Keras "mixed_float16" policy for the networks (float16 compute, float32 weights; output
    # heads and losses stay float32); no loss scaling. Pays off on GPUs with float16 units only.
    mixed_precision: bool = False
    # XLA-compile the training and evaluation steps (passed to ``model.compile``).
    jit_compile: bool = False
    # A non-finite loss term: "stop" ends training with an error naming the epoch, batch and
    # term; "skip" drops the batch (no weight, optimizer-moment or metric update) and counts it.
    on_nonfinite: str = "stop"
    # Bit-identical weights for the same seed and config on the same machine: op determinism,
    # seeded Keras/NumPy/Python generators and data.deterministic (slower; see docs/training.md).
    deterministic: bool = False
    # Multi-worker training (TF_CONFIG; docs/training.md, "Failure behaviour"). A task whose
    # heartbeats stop for heartbeat_timeout seconds (killed, stopped, its machine gone) is lost:
    # TensorFlow's coordination service aborts the other tasks' collective operations and each
    # ends with an error naming it. At exit a task waits at most shutdown_timeout seconds for
    # the others. collective_timeout > 0 also fails any collective operation (a step's
    # all-reduce) that waits longer than that for the other tasks, which catches a task whose
    # process lives but no longer takes part; it must exceed the longest time one task can run
    # ahead of another (the chief's checkpoint, logs and final evaluation and export).
    heartbeat_timeout: float = 10.0
    shutdown_timeout: float = 10.0
    collective_timeout: float = 0.0

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs must be >= 1", self.epochs)
        _check(self.steps_per_epoch >= 0, "train.steps_per_epoch must be >= 0", self.steps_per_epoch)
        _check(self.learning_rate > 0, "train.learning_rate must be > 0", self.learning_rate)
        _check(self.lr_decay_epochs >= 1, "train.lr_decay_epochs must be >= 1", self.lr_decay_epochs)
        _check(self.gamma >= 0, "train.gamma must be >= 0", self.gamma)
        _check(self.top_k >= 1, "train.top_k must be >= 1", self.top_k)
        _check(self.eval_every >= 1, "train.eval_every must be >= 1", self.eval_every)
        _check(self.image_log_epochs >= 0, "train.image_log_epochs must be >= 0",
               self.image_log_epochs)
        _check(self.strategy in ("auto", "mirrored", "multi_worker", "default"),
               "train.strategy must be auto, mirrored, multi_worker or default", self.strategy)
        _check(isinstance(self.sync_batch_norm, bool), "train.sync_batch_norm must be true or false",
               self.sync_batch_norm)
        _check(isinstance(self.mixed_precision, bool), "train.mixed_precision must be true or false",
               self.mixed_precision)
        _check(isinstance(self.jit_compile, bool), "train.jit_compile must be true or false",
               self.jit_compile)
        _check(not (self.mixed_precision and self.jit_compile),
               "train.mixed_precision and train.jit_compile cannot be combined: XLA in "
               "TensorFlow 2.16 rejects the float16 ReLU gradients; set one of them",
               (self.mixed_precision, self.jit_compile))
        _check(self.on_nonfinite in ("stop", "skip"), "train.on_nonfinite must be stop or skip",
               self.on_nonfinite)
        _check(self.heartbeat_timeout >= 1, "train.heartbeat_timeout must be >= 1 (seconds)",
               self.heartbeat_timeout)
        _check(self.shutdown_timeout >= 1, "train.shutdown_timeout must be >= 1 (seconds)",
               self.shutdown_timeout)
        _check(self.collective_timeout >= 0,
               "train.collective_timeout must be >= 0 (seconds; 0: no limit)",
               self.collective_timeout)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    # SavedModel goes to <dir>/<name>/<version>/ (the layout TF Serving loads); "" dir = no export.
    dir: str = "saved_models"
    name: str = "lsnet"
    version: int = 1

    def validate(self) -> None:
        _check(self.version >= 1, "export.version must be >= 1", self.version)


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str) -> None:
        if not is_remote(path):  # a URL's folder needs no creating (write_text)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_text(path, self.to_yaml())


def _check(ok: bool, message: str, received: Any) -> None:
    if not ok:
        raise ConfigError(f"{message} (received {received!r})")


def check_positive_int(value, name):
    """A model or op argument (``max_rois``, ``top_k``, ``max_boxes``) that must be an int >= 1;
    ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, received {value!r}")
