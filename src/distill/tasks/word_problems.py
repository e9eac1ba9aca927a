"""Two- and three-step word problems from templates: each step one operation, written out in the rationale."""

from __future__ import annotations

import random

from distill.tasks.base import Problem, Task

NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Iris", "Jon", "Kai", "Lena", "Milo", "Nora")
ITEMS = ("apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards", "stickers", "beads")


def _people(generator: random.Random) -> tuple[str, str]:
    first, second = generator.sample(NAMES, 2)
    return first, second


def _buy_then_give(generator: random.Random) -> Problem:
    name, friend = _people(generator)
    item = generator.choice(ITEMS)
    start, bought = generator.randint(5, 60), generator.randint(2, 40)
    given = generator.randint(1, start + bought)
    total = start + bought
    prompt = (f"{name} has {start} {item}. {name} buys {bought} more and then gives {given} to {friend}. "
              f"How many {item} does {name} have now?")
    rationale = f"{start} + {bought} = {total}\n{total} - {given} = {total - given}"
    return Problem(f"give:{start}:{bought}:{given}:{item}:{name}:{friend}", prompt, str(total - given), rationale, 2)


def _boxes_then_eat(generator: random.Random) -> Problem:
    name = generator.choice(NAMES)
    item = generator.choice(ITEMS)
    per_box, boxes = generator.randint(3, 25), generator.randint(2, 12)
    total = per_box * boxes
    lost = generator.randint(1, total)
    prompt = (f"A box holds {per_box} {item}. {name} fills {boxes} boxes and then loses {lost} {item}. "
              f"How many {item} are left?")
    rationale = f"{per_box} * {boxes} = {total}\n{total} - {lost} = {total - lost}"
    return Problem(f"boxes:{per_box}:{boxes}:{lost}:{item}:{name}", prompt, str(total - lost), rationale, 2)


def _earn_spend_share(generator: random.Random) -> Problem:
    name, friend = _people(generator)
    daily, days = generator.randint(4, 30), generator.randint(2, 9)
    earned = daily * days
    spent = generator.randint(1, earned)
    left = earned - spent
    prompt = (f"{name} earns {daily} dollars a day for {days} days, spends {spent} dollars, and then gets "
              f"twice as much again from {friend} as is left. How many dollars does {name} have now?")
    rationale = (f"{daily} * {days} = {earned}\n{earned} - {spent} = {left}\n"
                 f"{left} * 2 = {left * 2}\n{left} + {left * 2} = {left * 3}")
    return Problem(f"earn:{daily}:{days}:{spent}:{name}:{friend}", prompt, str(left * 3), rationale, 4)


def _collect_then_split(generator: random.Random) -> Problem:
    name, friend = _people(generator)
    item = generator.choice(ITEMS)
    groups = generator.randint(2, 6)
    share = generator.randint(2, 20)
    extra = generator.randint(1, 30)
    total = groups * share
    prompt = (f"{name} has {total - extra} {item} and {friend} gives {name} {extra} more. {name} shares them "
              f"equally among {groups} friends. How many {item} does each friend get?")
    rationale = f"{total - extra} + {extra} = {total}\n{total} / {groups} = {share}"
    return Problem(f"split:{total - extra}:{extra}:{groups}:{item}:{name}:{friend}", prompt, str(share), rationale,
                   2) if total > extra else _buy_then_give(generator)


TEMPLATES = (_buy_then_give, _boxes_then_eat, _earn_spend_share, _collect_then_split)


def draw(generator: random.Random) -> Problem:
    return generator.choice(TEMPLATES)(generator)


TASKS = (Task("word_problems", "two- to four-step word problems (add, subtract, multiply, divide) from templates",
              draw, numeric=True, space=4 * 50 * 30 * 20 * len(ITEMS) * len(NAMES)),)
