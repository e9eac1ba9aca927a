"""Training from a cache: check it belongs to the recipe's teacher and data, then hand the trainer a source."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
from torch import nn

from distill.cache.fingerprint import (
    dataset_fingerprint,
    model_fingerprint,
    tokenizer_fingerprint,
)
from distill.cache.format import FINAL_HIDDEN
from distill.cache.read import TeacherCache
from distill.data.indexed import IndexedDataset
from distill.errors import DistillError
from distill.teachers import CachedTeacher, CachedTeachers


def _short(fingerprint: str | None) -> str:
    return "none" if fingerprint is None else fingerprint.removeprefix("sha256:")[:12]


def check_samples(cache: TeacherCache, split: str, dataset: Any, role: str) -> None:
    """The cache must hold every sample id the dataset will ask for, and have been computed from these inputs."""
    stored = cache.split(split)
    size = len(dataset)
    missing = stored.missing(np.arange(size, dtype=np.int64))
    if len(missing) or len(stored) != size:
        raise DistillError(f"teacher cache {cache.directory} holds {len(stored)} {split!r} samples, the {role} has "
                           f"{size}" + (f"; ids {missing[:5].tolist()}{'...' if len(missing) > 5 else ''} are not "
                                        "in the cache" if len(missing) else "")
                           + ". It was built for other data: rebuild it with this recipe's data settings")
    expected = cache.metadata["dataset_fingerprints"].get(split)
    actual = dataset_fingerprint(dataset)
    if expected != actual:
        raise DistillError(f"teacher cache {cache.directory} was built from other {role} inputs: dataset fingerprint "
                           f"{_short(actual)} here, {_short(expected)} in the cache (same sample count, different "
                           "samples or order: data.dataset, data.seed, val_size or train_subset changed?). Rebuild "
                           "the cache with this recipe")


def _open_checked(path: str, config: Any, data: Any, val: Any, teacher: nn.Module | None) -> TeacherCache:
    """Open a cache after every check against this run: shard checksums, teacher and tokenizer fingerprints,
    sample ids and inputs of both splits."""
    from distill.cache.build import recipe_teacher_fingerprint

    cache = TeacherCache(path)
    recorded = cache.metadata["teacher_fingerprint"]
    if teacher is not None or config.teacher.model is not None:
        actual = model_fingerprint(teacher) if teacher is not None else recipe_teacher_fingerprint(config, data)
        if actual != recorded:
            raise DistillError(f"teacher cache {cache.directory} was built from another teacher: the recipe's "
                               f"teacher weights have fingerprint {_short(actual)}, the cache's "
                               f"{_short(recorded)}. Rebuild the cache from this teacher, or drop teacher.model to "
                               "train from the cache as it is")
    tokenizer = getattr(data, "tokenizer", None) or getattr(data.train, "tokenizer", None)
    recorded_tokenizer = cache.metadata.get("tokenizer_fingerprint")
    if tokenizer is not None or recorded_tokenizer is not None:
        actual_tokenizer = tokenizer_fingerprint(tokenizer)
        if actual_tokenizer != recorded_tokenizer:
            raise DistillError(f"teacher cache {cache.directory} was built with another tokenizer: fingerprint "
                               f"{_short(actual_tokenizer)} here, {_short(recorded_tokenizer)} in the cache")
    check_samples(cache, "train", data.train, "training set")
    if val is not None:
        if "val" not in cache.metadata["splits"]:
            raise DistillError(f"teacher cache {cache.directory} has no validation split, and the recipe validates "
                               f"on {len(val)} samples; rebuild the cache with this recipe's data settings")
        check_samples(cache, "val", val, "validation set")
    return cache


def cached_teacher_for_run(config: Any, data: Any, teacher: nn.Module | None = None
                           ) -> tuple[CachedTeacher | CachedTeachers, Any]:
    """A bound teacher source and ``data`` with train/val wrapped to yield sample ids, after every check of
    :func:`_open_checked` and of the signals the objective reads. ``teacher`` (or the recipe's ``teacher.model``)
    is only fingerprinted, never run. ``teacher.cache`` as ``{name: folder}`` gives one cache per teacher."""
    from distill.objective import Objective

    val = data.val if data.val is not None and len(data.val) > 0 else None
    paths = config.teacher.cache
    source: CachedTeacher | CachedTeachers
    if isinstance(paths, dict):
        caches = {name: _open_checked(path, config, data, val, None) for name, path in paths.items()}
        source = CachedTeachers({name: CachedTeacher(cache) for name, cache in caches.items()})

        def locate(signal: str) -> tuple[TeacherCache, str]:
            owner, inner = source.route(signal)  # type: ignore[union-attr]
            return caches[owner], inner
    else:
        cache = _open_checked(paths, config, data, val, teacher)
        source = CachedTeacher(cache)

        def locate(signal: str) -> tuple[TeacherCache, str]:
            return cache, signal
    objective = Objective(config.objective)
    if objective.needs_teacher:
        source.bind(objective.signals("teacher"))
        check_padding(objective, locate)
        check_topk_terms(objective, locate)
    wrapped = dataclasses.replace(data, train=IndexedDataset(data.train),
                                  val=IndexedDataset(val) if val is not None else None)
    return source, wrapped


def check_padding(objective: Any, locate: Callable[[str], tuple[TeacherCache, str]]) -> None:
    """Refuse terms that would read a per-token cached signal with a loss that cannot mask padding."""
    for term in objective.terms:
        if "teacher" not in term.loss.inputs:
            continue
        cache, signal = locate(term.teacher_signal)
        info = cache.signals.get(signal)
        if info is not None and info.ragged and "mask" not in term.loss.options:
            # Padding positions are not stored; a loss that cannot mask them would compare against zeros
            # where the live teacher gives its pad-token states: another loss than the recipe's.
            raise DistillError(f"objective term {term.name!r}: loss {term.loss.name!r} takes no mask, so it "
                               f"also compares padding positions of the per-token signal {term.teacher_signal!r}, "
                               "which a teacher cache does not store; train this term with the live teacher")


def check_topk_terms(objective: Any, locate: Callable[[str], tuple[TeacherCache, str]]) -> None:
    """token_kd terms on a teacher stored as its top k: forward KL only, and no more than the k stored."""
    from distill.losses.lm import check_cached_topk

    for term in objective.terms:
        if "teacher" not in term.loss.inputs:
            continue
        cache, signal = locate(term.teacher_signal)
        cached_k = cache.metadata.get("k")
        if signal == FINAL_HIDDEN and cached_k is not None:
            try:
                check_cached_topk(int(cached_k), term.options.get("divergence", "forward_kl"),
                                  term.options.get("top_k"))
            except DistillError as error:
                raise DistillError(f"objective term {term.name!r} with teacher cache {cache.directory}: "
                                   f"{error}") from None
