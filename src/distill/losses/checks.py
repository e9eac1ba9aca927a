"""Argument checks shared by the loss functions: one clear error naming the loss and the shapes it needs."""

from __future__ import annotations

from torch import Tensor


def shapes_error(loss: str, student: Tensor, teacher: Tensor, requirement: str) -> ValueError:
    return ValueError(
        f"{loss}: student shape {tuple(student.shape)} and teacher shape "
        f"{tuple(teacher.shape)} are incompatible: {requirement}"
    )


def check_same_shape(loss: str, student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise shapes_error(loss, student, teacher, "they must be equal")


def check_ndim(loss: str, student: Tensor, teacher: Tensor, ndim: int, layout: str,
                *, at_least: bool = False) -> None:
    bad = (lambda x: x.dim() < ndim) if at_least else (lambda x: x.dim() != ndim)
    if bad(student) or bad(teacher):
        qualifier = "at least " if at_least else ""
        raise shapes_error(
            loss, student, teacher, f"both must have {qualifier}{ndim} dimensions ({layout})"
        )


def check_kind(loss: str, kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        raise ValueError(f"{loss}: kind must be one of {', '.join(map(repr, allowed))}, got {kind!r}")


def check_positive(loss: str, name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{loss}: {name} must be > 0, got {value!r}")


def check_mask(loss: str, mask: Tensor, expected: tuple[int, ...], what: str) -> None:
    if tuple(mask.shape) != tuple(expected):
        raise ValueError(
            f"{loss}: mask shape {tuple(mask.shape)} does not match {what} shape {tuple(expected)}"
        )
