"""Where a training run's wall time goes: start-up phases, steps, validation, each callback.

``python -m lsnet_tf.train`` keeps a ``Timeline`` of every run; the trainer's summary
(``eval.json``) holds its ``summary()`` under ``"timing"``, and ``python -m benchmarks profile``
prints it as a table. Times are wall-clock seconds (``time.perf_counter``).

- ``mark(name)``: the end of a start-up phase (datasets, model, restore, ...), measured from the
  previous mark; the first phase is measured from the Timeline's creation.
- ``instrument(callbacks)``: the callbacks of ``fit``, each wrapped so that its ``on_epoch_end``
  time goes to its own row (checkpointing, image logging, ... measured apart), between a first
  callback that records each training step (batch begin to batch end: the step, its input wait
  and the fetch of its losses) and each validation pass (``on_test_begin`` to ``on_test_end``),
  and a last one that closes each epoch's wall time.
"""
from __future__ import annotations

import time

import keras
import tensorflow as tf

__all__ = ["Timeline"]


class Timeline:
    """See the module docstring. With `trace_dir`, the TensorFlow profiler records a trace of
    the training steps `trace_steps` (first, last; 0-based) of the second epoch into it, for
    TensorBoard's profile plugin."""

    def __init__(self, trace_dir: str | None = None, trace_steps: tuple[int, int] = (5, 10)):
        self.trace_dir, self.trace_steps = trace_dir, trace_steps
        self.start = self._last = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.callbacks: dict[str, list[float]] = {}  # name -> seconds per epoch
        self.steps: list[list[float]] = []  # per epoch, seconds per training step
        self.validation: list[tuple[int, float]] = []  # (epoch index, seconds) per pass
        self.epochs: list[float] = []  # wall seconds per epoch (epoch begin to its end hooks)
        self.first_step_at: float | None = None  # seconds from creation to the first step

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now

    def instrument(self, callbacks) -> list:
        steps = _Steps(self)
        return [steps, *(_Timed(self, c, type(c).__name__) for c in callbacks),
                _EpochEnd(self, steps)]

    def summary(self) -> dict:
        """Seconds: start-up phases; the first epoch (which traces the steps) apart; for the
        steady-state epochs (every epoch but the first, or the only one) the mean training epoch
        without its validation pass (``train_epoch_s``: steps, each callback, the rest), and
        the mean validation pass after the first one (which traces the evaluation step)."""
        def mean(xs):
            return sum(xs) / len(xs) if xs else 0.0

        steady = slice(1, None) if len(self.epochs) > 1 else slice(0, None)
        first = 1 if len(self.epochs) > 1 else 0
        step_times = [t for epoch in self.steps[steady] for t in epoch]
        in_epoch = {}
        for epoch, seconds in self.validation:
            in_epoch[epoch] = in_epoch.get(epoch, 0.0) + seconds
        passes = [s for _, s in self.validation]
        train_epochs = [wall - in_epoch.get(i, 0.0)
                        for i, wall in enumerate(self.epochs) if i >= first]
        out = {
            "startup": {k: round(v, 2) for k, v in self.phases.items()},
            "first_step_after_s": (round(self.first_step_at, 2)
                                   if self.first_step_at is not None else None),
            "epochs": len(self.epochs),
            "first_epoch_s": round(self.epochs[0], 2) if self.epochs else None,
            "train_epoch_s": round(mean(train_epochs), 3),
            "steps_per_epoch": len(self.steps[-1]) if self.steps else 0,
            "step_s": round(mean(step_times), 4),
            "steps_s": round(mean([sum(e) for e in self.steps[steady]]), 3),
            "validation_passes": len(passes),
            "validation_pass_s": round(mean(passes[1:] if len(passes) > 1 else passes), 3),
            "callbacks_s": {k: round(mean(v[steady]), 3) for k, v in self.callbacks.items()},
        }
        accounted = out["steps_s"] + sum(out["callbacks_s"].values())
        out["other_s"] = round(out["train_epoch_s"] - accounted, 3)
        return out


class _Timed(keras.callbacks.Callback):
    """Forwards every hook to `inner`, timing its epoch-end work."""

    def __init__(self, timeline: Timeline, inner, name: str):
        super().__init__()
        self.timeline, self.inner, self.name = timeline, inner, name
        timeline.callbacks.setdefault(name, [])

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)

    def __getattribute__(self, attr):
        # Every hook but the timed ones goes straight to the wrapped callback.
        if attr.startswith("on_") and attr not in ("on_epoch_end", "on_train_end"):
            return getattr(object.__getattribute__(self, "inner"), attr)
        return object.__getattribute__(self, attr)

    def on_epoch_end(self, epoch, logs=None):
        start = time.perf_counter()
        try:
            self.inner.on_epoch_end(epoch, logs)
        finally:
            self.timeline.callbacks[self.name].append(time.perf_counter() - start)

    def on_train_end(self, logs=None):
        self.inner.on_train_end(logs)


class _Steps(keras.callbacks.Callback):
    """Training steps, validation passes and epochs (place it first in the callback list)."""

    def __init__(self, timeline: Timeline):
        super().__init__()
        self.t = timeline
        self._batch = self._test = self._epoch = None
        self._tracing = False

    def _trace(self, batch: int, begin: bool) -> None:
        if not self.t.trace_dir or len(self.t.epochs) != 1:
            return
        first, last = self.t.trace_steps
        if begin and batch == first and not self._tracing:
            tf.profiler.experimental.start(self.t.trace_dir)
            self._tracing = True
        elif not begin and batch >= last and self._tracing:
            tf.profiler.experimental.stop()
            self._tracing = False

    def on_epoch_end(self, epoch, logs=None):
        if self._tracing:  # the epoch had fewer steps than the traced range
            tf.profiler.experimental.stop()
            self._tracing = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = time.perf_counter()
        self.t.steps.append([])

    def on_train_batch_begin(self, batch, logs=None):
        self._trace(batch, begin=True)
        self._batch = time.perf_counter()
        if self.t.first_step_at is None:
            self.t.first_step_at = self._batch - self.t.start

    def on_train_batch_end(self, batch, logs=None):
        if logs:  # the step's losses reach the host here (as the progress bar would fetch them)
            float(next(iter(logs.values())))
        self.t.steps[-1].append(time.perf_counter() - self._batch)
        self._trace(batch, begin=False)

    def on_test_begin(self, logs=None):
        self._test = time.perf_counter()

    def on_test_end(self, logs=None):
        self.t.validation.append((len(self.t.epochs), time.perf_counter() - self._test))


class _EpochEnd(keras.callbacks.Callback):
    """Closes an epoch's wall time: place it last, after every epoch-end hook."""

    def __init__(self, timeline: Timeline, steps: _Steps):
        super().__init__()
        self.t, self.steps = timeline, steps

    def on_epoch_end(self, epoch, logs=None):
        self.t.epochs.append(time.perf_counter() - self.steps._epoch)
