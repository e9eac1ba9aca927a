"""Unlabeled transfer sets, the label-scarce setting (Hinton et al. 2015, section 6 of the speech experiments):
the student keeps the labels of only ``labelled_fraction`` of the training set, the teacher labels all of it.
With the usual objective (soft_kl + cross_entropy) the soft term covers every example and the label term only the
labelled ones; ``teacher_label_ce`` instead gives the teacher's hard decisions. The baseline learns from the
labelled subset alone, for as many optimizer steps as the student takes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from distill.config import TransferSetMode
from distill.data import ArrayDataset
from distill.data.arrays import split_indices
from distill.errors import DistillError
from distill.modes.common import ModeRun, require_classifier
from distill.objective import Objective
from distill.run import RunResult

UNLABELLED = -100  # cross_entropy's ignore_index: these examples only meet the teacher


def labelled_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of the labelled examples: a stratified random ``fraction`` of them, at least one."""
    count = max(1, round(fraction * len(labels)))
    return np.sort(split_indices(labels, count, seed)[1])


def run(job: ModeRun, student, mode: TransferSetMode) -> RunResult:
    config = job.config
    require_classifier(job.data, "transfer_set")
    train = job.data.train
    if not isinstance(train, ArrayDataset):
        raise DistillError("transfer_set works on array datasets (built-in or file data with labels)")
    inputs, labels = train.inputs.numpy(), train.labels.numpy()
    labelled = labelled_split(labels, mode.labelled_fraction, config.seed)
    masked = np.full_like(labels, UNLABELLED)
    masked[labelled] = labels[labelled]
    pool = unlabelled_inputs(mode, config.seed, inputs.shape[1:]) if mode.unlabelled is not None else None
    if pool is not None:
        inputs_all = np.concatenate([inputs, pool.astype(inputs.dtype)])
        masked = np.concatenate([masked, np.full(len(pool), UNLABELLED, dtype=masked.dtype)])
    else:
        inputs_all = inputs
    student_data = replace(job.data, train=ArrayDataset(inputs_all, masked))
    labelled_data = replace(job.data, train=ArrayDataset(inputs[labelled], labels[labelled]))
    teacher, teacher_spec = job.teacher("transfer_set")
    teacher = job.teacher_stage("teacher", teacher, teacher_spec, config.teacher.train,
                                data=labelled_data if mode.teacher_labels == "labelled" else None)
    job.check({"teacher": teacher, "student": student})
    baseline = None
    if config.baseline:
        # Same number of optimizer steps as the student, so the baseline is not short of training, only of labels.
        per_epoch = max(1, len(masked) // (config.training.batch_size * config.training.grad_accum))
        steps = config.training.max_steps or max(1, math.ceil((config.training.epochs or 1) * per_epoch))
        # ... and validated / checkpointed as often, not every few steps of its small epochs
        training = config.training.model_copy(update={
            "max_steps": steps, "eval_every": config.training.eval_every or per_epoch,
            "checkpoint_every": config.training.checkpoint_every or per_epoch})
        import copy

        baseline = job.stage("baseline", copy.deepcopy(student), config.student.model,
                             objective=Objective.hard_labels(), seed=config.seed, training=training,
                             data=labelled_data)
    trained = job.stage("student", student, config.student.model, objective=Objective(config.objective),
                        seed=config.seed, teacher=teacher, data=student_data)
    return job.finish({"teacher": teacher, "baseline": baseline, "student": trained},
                      extra={"labelled": int(len(labelled)), "unlabelled": int(len(masked) - len(labelled)),
                             "unlabelled_pool": 0 if pool is None else int(len(pool))})


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
