"""One home for each word the parts of the system exchange: methods, stages, metric and state names."""

from __future__ import annotations

from typing import Literal

Method = Literal["baseline", "lsr", "tsla", "lsr-pre", "tsla-pre"]
METHODS: tuple[Method, ...] = ("baseline", "lsr", "tsla", "lsr-pre", "tsla-pre")
# Smoothing for epochs 0 .. switch_epoch-1, one-hot after.
TWO_STAGE_METHODS: tuple[Method, ...] = ("tsla", "tsla-pre")
# The prior is a teacher's softmax instead of the uniform distribution.
TEACHER_METHODS: tuple[Method, ...] = ("lsr-pre", "tsla-pre")

# The target kind of an epoch: the smoothed mixture, or plain one-hot labels.
Stage = Literal["smooth", "onehot"]

# Metric names, as `split/name`: what the core logs every epoch and the service stores.
TRAIN_LOSS = "train/loss"
TRAIN_TOP1 = "train/top1"
TRAIN_LR = "train/lr"
TRAIN_IMAGES_PER_S = "train/images_per_s"
TRAIN_GRAD_VAR = "train/grad_var"
TRAIN_EPOCH_TIME = "train/epoch_time"
# Plain one-hot cross-entropy on the training batches: unlike train/loss (the loss trained on,
# smoothed in the first stage) it is comparable across the switch and across methods.
TRAIN_CE = "train/ce"
# Squared norm of the mean (full-batch) gradient on probe steps, for a noise-to-signal ratio.
TRAIN_GRAD_NORM_SQ = "train/grad_norm_sq"
# Held out from the training data: what selection (best checkpoint, teachers) looks at.
VAL_LOSS = "val/loss"
VAL_TOP1 = "val/top1"
VAL_TOP5 = "val/top5"
# The test split: for the final report only.
TEST_LOSS = "test/loss"
TEST_TOP1 = "test/top1"
TEST_TOP5 = "test/top5"

JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "canceled")
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
FINISHED_STATES: tuple[JobState, ...] = ("succeeded", "failed", "canceled")
