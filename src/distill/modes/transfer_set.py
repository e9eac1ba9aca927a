"""Unlabeled transfer sets, the label-scarce setting (Hinton et al. 2015, section 6 of the speech experiments):
the student keeps the labels of only ``labelled_fraction`` of the training set, the teacher labels all of it.
With the usual objective (soft_kl + cross_entropy) the soft term covers every example and the label term only the
labelled ones; ``teacher_label_ce`` instead gives the teacher's hard decisions. The baseline learns from the
labelled subset alone, for as many optimizer steps as the student takes."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from distill.config import Recipe, TransferSetMode
from distill.data import ArrayDataset
from distill.data.arrays import split_indices
from distill.errors import DistillError
from distill.modes.common import (
    baseline_stages,
    build_mode_student,
    build_mode_teacher,
    checked,
    distil_stage,
    finish_stage,
    prepare_stage,
    require_classifier,
    teacher_stages,
)
from distill.stages import RunContext, Stage

UNLABELLED = -100  # cross_entropy's ignore_index: these examples only meet the teacher


def labelled_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of the labelled examples: a stratified random ``fraction`` of them, at least one."""
    count = max(1, round(fraction * len(labels)))
    return np.sort(split_indices(labels, count, seed)[1])


def _datasets(context: RunContext, mode: TransferSetMode) -> None:
    """``student-data``: every training input, labels kept for the labelled share only (plus the unlabelled
    pool); ``labelled-data``: the labelled share alone."""
    config, data = context.config, context.data
    train = data.train
    if not isinstance(train, ArrayDataset):
        raise DistillError("transfer_set works on array datasets (built-in or file data with labels)")
    inputs, labels = train.inputs.numpy(), train.labels.numpy()
    labelled = labelled_split(labels, mode.labelled_fraction, config.seed)
    masked = np.full_like(labels, UNLABELLED)
    masked[labelled] = labels[labelled]
    pool = unlabelled_inputs(mode, config.seed, inputs.shape[1:]) if mode.unlabelled is not None else None
    if pool is not None:
        inputs = np.concatenate([inputs, pool.astype(inputs.dtype)])
        masked = np.concatenate([masked, np.full(len(pool), UNLABELLED, dtype=masked.dtype)])
    context.artifacts["student-data"] = replace(data, train=ArrayDataset(inputs, masked))
    context.artifacts["labelled-data"] = replace(data, train=ArrayDataset(train.inputs.numpy()[labelled],
                                                                          labels[labelled]))
    context.artifacts["counts"] = {"labelled": int(len(labelled)), "unlabelled": int(len(masked) - len(labelled)),
                                   "unlabelled_pool": 0 if pool is None else int(len(pool))}


def _baseline_training(context: RunContext) -> Any:
    """As many optimizer steps as the student takes (over all its inputs), so the baseline is not short of
    training, only of labels; validated and checkpointed as often, not every few steps of its small epochs."""
    training = context.config.training
    per_epoch = max(1, len(context["student-data"].train) // (training.batch_size * training.grad_accum))
    steps = training.max_steps or max(1, math.ceil((training.epochs or 1) * per_epoch))
    return training.model_copy(update={"max_steps": steps, "eval_every": training.eval_every or per_epoch,
                                       "checkpoint_every": training.checkpoint_every or per_epoch})


def plan(config: Recipe, mode: TransferSetMode, given: set[str]) -> list[Stage]:
    def prepare(context: RunContext) -> None:
        require_classifier(context.data, "transfer_set")
        _datasets(context, mode)
        context.artifacts["teacher"] = build_mode_teacher(context)
        context.artifacts["student"] = build_mode_student(context)
        checked(context, {"teacher": context["teacher"], "student": context["student"]},
                distilled=("student", "teacher"))

    return [prepare_stage("keep the labels of a stratified share of the training set; build teacher and student",
                          prepare, ("student-data", "labelled-data", "counts", "teacher", "student"), given),
            *teacher_stages(config, data="labelled-data" if mode.teacher_labels == "labelled" else "data"),
            *baseline_stages(config, data="labelled-data", training=_baseline_training),
            distil_stage(config, "student", model="student", teacher="teacher", seed=config.seed, data="student-data",
                         does="distil the student: the teacher's targets on every input, labels where kept"),
            finish_stage(config, lambda context: {"teacher": context["teacher"], "baseline": context.get("baseline"),
                                                  "student": context["student"]},
                         reads=("teacher", "student"), extra=lambda context: dict(context["counts"]))]


def unlabelled_inputs(mode: TransferSetMode, seed: int, input_shape: tuple[int, ...]) -> np.ndarray:
    """The extra unlabelled inputs of ``mode.unlabelled``, checked against the run's input shape."""
    from distill.data import load_builtin
    from distill.data.files import load_unlabelled_inputs

    spec = mode.unlabelled
    assert spec is not None
    if spec.dataset is not None:
        pool = load_builtin(spec.dataset, seed=seed).train_x
        where = f"mode.unlabelled.dataset {spec.dataset!r}"
    else:
        pool = load_unlabelled_inputs(spec.path, features=spec.features, format=spec.format)  # type: ignore[arg-type]
        where = f"mode.unlabelled.path {spec.path}"
    if tuple(pool.shape[1:]) != tuple(input_shape):
        raise DistillError(f"{where}: inputs of shape {tuple(pool.shape[1:])}, and the run's training inputs are "
                           f"{tuple(input_shape)}; the teacher and student can only label inputs like their own")
    if len(pool) == 0:
        raise DistillError(f"{where} holds no rows")
    return pool[: spec.max_samples] if spec.max_samples else pool
