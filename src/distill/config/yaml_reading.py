"""Recipe YAML read safely and within bounds.

``yaml.safe_load`` builds no objects from tags, but it still accepts input that hurts later: a duplicate key
silently keeps the last value, an alias bomb ("billion laughs") expands into billions of values once pydantic
walks it, 10,000 nested brackets end in a ``RecursionError``, and a binary file ends in a ``UnicodeDecodeError``.
Here every such input is refused as one paragraph that names the file, the line and the section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from distill.errors import DistillError

MAX_RECIPE_BYTES = 1_000_000
"""A recipe is a few kB of settings; a file over 1 MB is not one (or is data given as a recipe)."""
MAX_DEPTH = 50
"""Levels of nesting: the deepest built-in recipe has 6; the YAML composer recurses, so a bound keeps it far from
Python's recursion limit."""
MAX_ALIASES = 100
"""Aliases (``*name``) in one document: a recipe uses a few to share a model spec or a training section."""
MAX_VALUES = 100_000
"""Values (scalars, lists, mappings) once every alias is expanded: an alias bomb passes the alias bound with 81
aliases nested 9 deep (9**9 values), so the expanded size is bounded too."""
MAX_KEY_LENGTH = 256
"""Characters of one key; recipe keys are short words, module paths or teacher names."""
MAX_INTEGER = 2 ** 63 - 1
"""Every count, size and seed ends up in a C integer (torch, numpy): a larger one would only fail later."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _shown(text: str, limit: int = 40) -> str:
    """A key or path cut short enough to print."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _section(parts: list[str]) -> str:
    dotted = ".".join(parts)
    return f"in {dotted if len(dotted) <= 80 else dotted[:80] + '...'}" if parts else "at the top level"


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, alias bombs, absurd nesting and absurd keys.

    The checks run while the document is composed into nodes, before any Python object is built: there the keys are
    as written (construction flattens ``<<`` merge keys first, which would make an overridden merged key look like a
    duplicate), each node still has its line, and the path from the root is known.
    """

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self.path: list[str] = []    # keys (and list indices) from the root to the node being composed
        self.aliases = 0

    def _refuse(self, problem: str, node_or_event: Any) -> None:
        line = node_or_event.start_mark.line + 1
        raise DistillError(f"{problem} (line {line} of {self.source})")

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self.path.append(_label(index))
        try:
            if len(self.path) > MAX_DEPTH:
                self._refuse(f"recipe nested more than {MAX_DEPTH} levels deep {_section(self._where())}",
                             self.peek_event())
            if self.check_event(AliasEvent):
                return self._alias(parent, index)
            node = super().compose_node(parent, index)
            node.expanded_size = 1 + sum(child.expanded_size for child in _children(node))
            if node.expanded_size > MAX_VALUES:
                self._refuse(f"recipe expands to more than {MAX_VALUES:,} values {_section(self._where())} (an "
                             "alias bomb? each alias repeats its anchor's whole content); refused before expanding it",
                             node)
            if isinstance(node, MappingNode):
                self._check_keys(node)
            return node
        finally:
            self.path.pop()

    def _where(self) -> list[str]:
        return [part for part in self.path[1:] if part]

    def _alias(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        self.aliases += 1
        if self.aliases > MAX_ALIASES:
            self._refuse(f"more than {MAX_ALIASES} YAML aliases (*{event.anchor}) {_section(self._where())}; a "
                         "recipe needs a few, and this many looks like an alias bomb, refused before expanding it",
                         event)
        anchored = self.anchors.get(event.anchor)
        if anchored is not None and not hasattr(anchored, "expanded_size"):
            self._refuse(f"YAML alias *{event.anchor} {_section(self._where())} refers to the list or mapping that "
                         "contains it; a recursive structure cannot be a recipe", event)
        return super().compose_node(parent, index)

    def _check_keys(self, node: MappingNode) -> None:
        where = _section(self._where())
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            if len(key_node.value) > MAX_KEY_LENGTH:
                self._refuse(f"key {_shown(key_node.value)} {where} is {len(key_node.value):,} characters long "
                             f"(at most {MAX_KEY_LENGTH})", key_node)
            identity = self._key_identity(key_node)
            line = key_node.start_mark.line + 1
            if identity in first_line:
                raise DistillError(f"duplicate key {key_node.value!r} {where} at lines {first_line[identity]} and "
                                   f"{line} of {self.source}: YAML would silently keep only the last value; remove "
                                   "one of them")
            first_line[identity] = line

    def _key_identity(self, key_node: ScalarNode) -> Any:
        """The key as Python will see it, so ``1`` and ``0x1`` (or ``yes`` and ``true``) are the same key."""
        constructor = self.yaml_constructors.get(key_node.tag)
        try:
            value = constructor(self, key_node) if constructor is not None else key_node.value
            hash(value)
        except Exception:   # the real construction reports a malformed scalar; here it is only a key to compare
            value = key_node.value
        return value


def _label(index: Any) -> str:
    """How pydantic and ``--set`` name a child: its key, or its index in a list (empty for the root and keys)."""
    if isinstance(index, ScalarNode):
        return index.value
    if isinstance(index, int):
        return str(index)
    return ""


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document with the bounds above; errors name ``source`` (a file, or ``--set KEY``)."""
    loader = None
    try:
        loader = BoundedLoader(text, source)     # its reader refuses control characters at once
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DistillError(f"YAML syntax error in {source}{where}: {error.problem}{_long_key_hint(text, mark)}"
                           ) from None
    except ReaderError as error:
        code = error.character if isinstance(error.character, int) else ord(error.character)
        raise DistillError(f"{source} holds the character {code:#x} at offset {error.position}, "
                           "which YAML does not allow: is it a text file?") from None
    except yaml.YAMLError as error:
        raise DistillError(f"YAML error in {source}: {' '.join(str(error).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _long_key_hint(text: str, mark: Any) -> str:
    """YAML ends a plain key at 1024 characters, and then reports a confusing syntax error: say so."""
    if mark is None:
        return ""
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    key = line.strip().removeprefix("- ").split(": ", 1)[0]
    if len(key) <= MAX_KEY_LENGTH or ": " not in line:
        return ""
    return f" (the key there is {len(key):,} characters long; recipe keys have at most {MAX_KEY_LENGTH})"


def read_yaml(path: Path) -> dict[str, Any]:
    """The recipe file ``path`` as a mapping of sections."""
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise DistillError(f"recipe {path} is {size:,} bytes; a recipe is a small YAML file of settings (at most "
                               f"{MAX_RECIPE_BYTES:,} bytes): is it the right file?")
        data = path.read_bytes()
    except OSError as error:
        raise DistillError(f"cannot read recipe {path}: {error.strerror}") from None
    raw = load_yaml(_decode(data, path), str(path))
    if not isinstance(raw, dict):
        raise DistillError(f"recipe {path} must be a mapping of sections (data, teacher, student, ...), "
                           f"got {type(raw).__name__}")
    return raw


def _decode(data: bytes, path: Path) -> str:
    if b"\x00" in data:
        raise DistillError(f"recipe {path} is a binary file (it holds NUL bytes), not YAML text: is it the right "
                           "file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DistillError(f"recipe {path} is not UTF-8 text (byte {data[error.start]:#04x} at offset "
                           f"{error.start}): save it as UTF-8, or check that it is the recipe") from None


def check_bounds(raw: Any, source: str) -> None:
    """Refuse what no recipe needs wherever it came from (a file, a dict from Python, a ``--set`` value): nesting
    deeper than ``MAX_DEPTH``, more than ``MAX_VALUES`` values, keys over ``MAX_KEY_LENGTH`` characters, numbers
    that are not finite and integers beyond ``MAX_INTEGER`` (also in free-form sections such as a term's
    ``options``, which pydantic does not type)."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(raw, ())]
    seen = 0
    while stack:    # iterative: a 10,000-level dict from Python must not overflow the stack here either
        value, path = stack.pop()
        seen += 1
        where = ".".join(str(part) for part in path)
        if seen > MAX_VALUES:
            raise DistillError(f"invalid recipe {source}: more than {MAX_VALUES:,} values (a recipe holds settings, "
                               "not data)")
        if len(path) > MAX_DEPTH:
            raise DistillError(f"invalid recipe {source}: nested more than {MAX_DEPTH} levels deep in "
                               f"{_shown(where, 80)}")
        _check_number(value, where, source)
        if isinstance(value, dict):
            for key, child in value.items():
                if isinstance(key, str) and len(key) > MAX_KEY_LENGTH:
                    raise DistillError(f"invalid recipe {source}: key {_shown(key)} {_section(list(map(str, path)))} "
                                       f"is {len(key):,} characters long (at most {MAX_KEY_LENGTH})")
                stack.append((child, (*path, key)))
        elif isinstance(value, (list, tuple)):
            stack.extend((child, (*path, index)) for index, child in enumerate(value))


def _check_number(value: Any, where: str, source: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise DistillError(f"invalid recipe {source}: {where or 'the recipe'} is {value}; every number in a recipe "
                           "must be finite (inf and nan are refused)")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
        raise DistillError(f"invalid recipe {source}: {where or 'the recipe'} is {value}, larger than any setting "
                           f"can take (at most 2**63 - 1 = {MAX_INTEGER:,})")
