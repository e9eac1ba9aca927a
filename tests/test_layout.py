"""The shape of the code, checked: no import cycles between the modules that build runs, no module reaching
into another's private helpers, and no function or file too long to read in one sitting."""

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "distill"
# Modules a run is assembled from; none may depend on another that depends back on it (lazy imports count).
LAYERS = ["distill.run", "distill.cache", "distill.modes", "distill.models", "distill.causal_lm", "distill.compress",
          "distill.stages", "distill.training_stage"]
MAX_FUNCTION_LINES = 80   # code lines, docstring excluded
MAX_FILE_LINES = 460


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[ast.ImportFrom | ast.Import]:
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _sources() -> dict[str, ast.AST]:
    return {_module(path): ast.parse(path.read_text()) for path in SRC.rglob("*.py")}


def _group(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycles_between_the_modules_runs_are_built_from():
    edges: dict[str, set[str]] = {}
    for module, tree in _sources().items():
        for node in _imports(tree):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            for name in names:
                if name and name.startswith("distill") and _group(name) != _group(module):
                    edges.setdefault(_group(module), set()).add(_group(name))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            current = todo.pop()
            for following in edges.get(current, ()):
                if following == goal:
                    return True
                if following not in seen:
                    seen.add(following)
                    todo.append(following)
        return False

    cycles = [(first, second) for first, second in itertools.combinations(LAYERS, 2)
              if reaches(first, second) and reaches(second, first)]
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_another_modules_private_names():
    private = [f"{module}: {node.module}.{alias.name}" for module, tree in _sources().items()
               for node in _imports(tree) if isinstance(node, ast.ImportFrom) and node.module
               and node.module.startswith("distill") and node.module != module
               for alias in node.names if alias.name.startswith("_") and alias.name != "__version__"]
    assert not private, private


def _code_lines(function: ast.FunctionDef) -> int:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring
    return (body[-1].end_lineno - body[0].lineno + 1) if body else 0


def test_functions_and_files_stay_short():
    long_functions = [f"{module}.{node.name}: {_code_lines(node)}" for module, tree in _sources().items()
                      for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and _code_lines(node) > MAX_FUNCTION_LINES]
    assert not long_functions, long_functions
    long_files = [f"{path.relative_to(SRC)}: {count}" for path in SRC.rglob("*.py")
                  if (count := len(path.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long_files, long_files
