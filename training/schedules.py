"""Optimizers and learning-rate schedules: Nadam, Adam or Nesterov SGD; 1cycle,
exponential, piecewise-constant or reduce-on-plateau."""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from training.config import TrainConfig


@keras.saving.register_keras_serializable(package="uq")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """1cycle: a linear warm-up from peak/25 to peak over the first 30% of the
    steps, then cosine annealing to peak/10^4."""

    def __init__(self, peak: float, total_steps: int) -> None:
        self.peak = peak
        self.total_steps = total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm_steps = max(1.0, 0.3 * self.total_steps)
        start, end = self.peak / 25, self.peak / 1e4
        warm = start + (self.peak - start) * step / warm_steps
        anneal_steps = max(1.0, self.total_steps - warm_steps)
        progress = tf.minimum((step - warm_steps) / anneal_steps, 1.0)
        anneal = end + (self.peak - end) * 0.5 * (1 + tf.cos(math.pi * progress))
        return tf.where(step < warm_steps, warm, anneal)

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total_steps}


def learning_rate_and_callbacks(
    config: TrainConfig, steps_per_epoch: int
) -> tuple[float | keras.optimizers.schedules.LearningRateSchedule, list[keras.callbacks.Callback]]:
    """The optimizer's learning rate (a float or a schedule) and any callback it needs."""
    total_steps = config.epochs * steps_per_epoch
    rate = config.learning_rate
    if config.schedule == "onecycle":
        return OneCycle(rate, total_steps), []
    if config.schedule == "exponential":  # a tenth of the rate by the last step
        return keras.optimizers.schedules.ExponentialDecay(rate, total_steps, 0.1), []
    if config.schedule == "piecewise":  # /10 at half and again at three quarters
        boundaries = [max(1, total_steps // 2), max(2, 3 * total_steps // 4)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, [rate, rate / 10, rate / 100]
        ), []
    plateau = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.5, patience=max(1, config.patience // 3), min_lr=1e-6
    )
    return rate, [plateau]


def make_optimizer(config: TrainConfig, learning_rate) -> keras.optimizers.Optimizer:
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate)
    return keras.optimizers.Nadam(learning_rate)
