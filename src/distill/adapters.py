"""Learned projections that let a student signal be compared with a teacher signal of another width.

Built from the first batch's shapes, trained with the student, checkpointed with it, and left out of the
exported student (they exist only to make the comparison possible).
"""

from __future__ import annotations

from torch import Tensor, nn


def make_adapter(student: Tensor, teacher: Tensor) -> nn.Module | None:
    """A projection from the student's shape to the teacher's, or None when no simple one exists.

    [B, Ds] or [B, T, Ds] -> linear on the last axis; [B, Cs, H, W] -> 1x1 conv2d; [B, Cs, L] with matching L and
    a different channel count -> 1x1 conv1d."""
    student_shape, teacher_shape = tuple(student.shape), tuple(teacher.shape)
    if student_shape == teacher_shape or len(student_shape) != len(teacher_shape):
        return None
    if len(student_shape) in (2, 3) and student_shape[:-1] == teacher_shape[:-1]:
        return nn.Linear(student_shape[-1], teacher_shape[-1])
    if len(student_shape) == 4 and student_shape[0] == teacher_shape[0] and student_shape[2:] == teacher_shape[2:]:
        return nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1)
    if len(student_shape) == 3 and student_shape[0] == teacher_shape[0] and student_shape[2] == teacher_shape[2]:
        return nn.Conv1d(student_shape[1], teacher_shape[1], kernel_size=1)
    return None
