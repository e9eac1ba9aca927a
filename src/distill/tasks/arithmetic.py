"""Multi-digit arithmetic with the school method written out: column addition with carries, subtraction with
borrows, long multiplication by partial products."""

from __future__ import annotations

import random

from distill.tasks.base import Problem, Task


def _digits(number: int) -> list[int]:
    return [int(digit) for digit in reversed(str(number))]


def add_steps(first: int, second: int) -> list[str]:
    """Column addition, units first: each column's sum and its carry."""
    steps, carry = [], 0
    a, b = _digits(first), _digits(second)
    for column in range(max(len(a), len(b))):
        x, y = (a[column] if column < len(a) else 0), (b[column] if column < len(b) else 0)
        total = x + y + carry
        with_carry = f" + {carry}" if carry else ""
        steps.append(f"{x} + {y}{with_carry} = {total}: write {total % 10}" + (", carry 1" if total >= 10 else ""))
        carry = total // 10
    if carry:
        steps.append("write the carried 1")
    return steps


def subtract_steps(first: int, second: int) -> list[str]:
    """Column subtraction (first >= second), units first: each column's difference and its borrow."""
    steps, borrow = [], 0
    a, b = _digits(first), _digits(second)
    for column in range(len(a)):
        x, y = a[column] - borrow, (b[column] if column < len(b) else 0)
        borrow = 1 if x < y else 0
        shown = f"{x + 10} - {y} = {x + 10 - y} (borrow 1)" if borrow else f"{x} - {y} = {x - y}"
        steps.append(shown)
    return steps


def multiply_steps(first: int, second: int) -> list[str]:
    """Long multiplication: one partial product per digit of the second number, then their sum."""
    partials = []
    for place, digit in enumerate(_digits(second)):
        partials.append((digit * 10 ** place, first * digit * 10 ** place))
    steps = [f"{first} * {factor} = {product}" for factor, product in partials]
    if len(partials) > 1:
        steps.append(" + ".join(str(product) for _, product in partials) + f" = {first * second}")
    return steps


def _problem(first: int, operation: str, second: int) -> Problem:
    if operation == "-" and second > first:
        first, second = second, first
    answer = {"+": first + second, "-": first - second, "*": first * second}[operation]
    steps = {"+": add_steps, "-": subtract_steps, "*": multiply_steps}[operation](first, second)
    expression = f"{first} {operation} {second}"
    rationale = "\n".join([*steps, f"So {expression} = {answer}."])
    return Problem(expression, f"What is {expression}?", str(answer), rationale, len(steps))


def _number(generator: random.Random, digits: int) -> int:
    return generator.randint(10 ** (digits - 1), 10 ** digits - 1)


def draw_mixed(generator: random.Random) -> Problem:
    operation = generator.choice("+-*")
    if operation == "*":
        return _problem(_number(generator, 2), "*", _number(generator, generator.choice((1, 2))))
    return _problem(_number(generator, 3), operation, _number(generator, generator.choice((2, 3))))


def draw_addition(generator: random.Random) -> Problem:
    return _problem(_number(generator, generator.choice((3, 4))), "+", _number(generator, generator.choice((3, 4))))


TASKS = (
    Task("arithmetic", "addition and subtraction of 3-digit numbers, 2-digit times 1- or 2-digit multiplication",
         draw_mixed, numeric=True, space=900 * 990 * 2 + 90 * 99),
    Task("addition", "addition of two 3- or 4-digit numbers, column by column", draw_addition, numeric=True,
         space=9900 * 9900 // 2),
)
