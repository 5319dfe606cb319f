"""The package's shape: imports run one way (no cycles), inference loads no training code, and the code
stays readable (files and functions within their size limits)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tinyrm": ROOT / "tinyrm", "tinyrm.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    return {f"{pkg}.{f.stem}" if f.stem != "__init__" else pkg: f
            for pkg, folder in PACKAGES.items() for f in sorted(folder.glob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports (at module level or inside functions), by reading its source."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:          # `from . import x` may name a module
                cand = f"{base}.{a.name}"
                out.add(cand if cand in known else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in known and m != name}


def _graph(skip_lazy_cli: bool = True) -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items() if not (skip_lazy_cli and n == "tinyrm.cli")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (first == last), or None: depth-first search with colours."""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_imports_have_no_cycle():
    graph = _graph()
    assert "tinyrm.synth" in graph["tinyrm.mix"] and "tinyrm.data" in graph["tinyrm.synth"]  # the reader works
    assert find_cycle(graph) is None, find_cycle(graph)


def test_only_the_cli_imports_inside_functions():
    lazy = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tinyrm")):
                        lazy.append(f"{name}:{node.lineno}")
    assert [x for x in lazy if not x.startswith("tinyrm.cli:")] == []


def test_inference_loads_no_training_code():
    code = "import sys, tinyrm.scorer; print(' '.join(sorted(m for m in sys.modules if m.startswith('tinyrm'))))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=ROOT).stdout.split())
    assert "tinyrm.scorer" in loaded and "tinyrm.prompts" in loaded
    assert not loaded & {"tinyrm.recipe", "tinyrm.data", "tinyrm.mix", "tinyrm.synth", "tinyrm.train"}, loaded


def test_files_and_functions_stay_small():
    long_files, long_fns = [], []
    for name, path in _modules().items():
        src = path.read_text()
        if src.count("\n") > 300:
            long_files.append(f"{name}: {src.count(chr(10))} lines")
        for fn in ast.walk(ast.parse(src)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno - fn.lineno + 1 > 60:
                long_fns.append(f"{name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines")
    assert not long_files and not long_fns, long_files + long_fns
