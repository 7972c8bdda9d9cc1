"""The repository's layout: imports run one way (no circles, no import from a lower layer up),
no module over 500 lines, and a root of thin commands (README "Layout")."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rsnn_bfd"
MAX_LINES = 500          # any module of the package, the tools and the benchmarks
MAX_ROOT_FILES = 11      # the published scripts and the other commands
MAX_FACE_LINES = 120     # a root file parses its arguments and calls the package

# The layers, lowest first: a module may import its own layer and those below it. Within a
# layer the files may import each other as long as no circle forms (checked below).
LAYERS = [
    ("helpers", ("rsnn_bfd.common", "rsnn_bfd.cli", "rsnn_bfd.writing")),
    ("network", ("rsnn_bfd.network",)),
    ("data", ("rsnn_bfd.data",)),
    ("configurations", ("rsnn_bfd.config",)),
    ("io", ("rsnn_bfd.io",)),
    ("training", ("rsnn_bfd.training",)),
    ("analyses and studies", ("rsnn_bfd.analyses", "rsnn_bfd.study")),
    ("package face", ("rsnn_bfd",)),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    """Every Python file of the project but the tests: {module name: path}. Tools and
    benchmarks are named by their folder (``tools.probe_representation``)."""
    files = [p for p in ROOT.glob("*.py")]
    for folder in (PACKAGE, "tools", "benchmarks"):
        files += (ROOT / folder).rglob("*.py")
    return {_module_name(p): p for p in files if "__pycache__" not in p.parts}


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules that ``path`` imports anywhere in it (functions included),
    resolved to the longest module name that exists."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: from .figures import ... inside a package
                base = _module_name(path).split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for k in range(len(parts), 0, -1):
                if ".".join(parts[:k]) in modules:
                    found.add(".".join(parts[:k]))
                    break
    return found


@pytest.fixture(scope="module")
def graph():
    """{module: the project modules it imports}; in tools/ and benchmarks/ a sibling is
    imported by its bare name (``from bench_step import make_input``)."""
    sources = _sources()
    modules = set(sources)
    out = {}
    for m, p in sources.items():
        folder = m.split(".")[0] if p.parent.name in ("tools", "benchmarks") else None
        found = _imports(p, modules)
        if folder:
            siblings = {n.split(".", 1)[1] for n in modules if n.startswith(folder + ".")}
            found |= {f"{folder}.{s}" for s in _imports(p, siblings)}
        out[m] = {i for i in found if i != m}
    return out


def _layer(module: str) -> int | None:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    return None if best is None else best[0]


def test_no_import_circles(graph):
    # Tarjan's strongly connected components: any component of two or more is a circle
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_imports_run_down_the_layers(graph):
    upward = []
    for module, imported in graph.items():
        here = _layer(module)
        for other in imported:
            there = _layer(other)
            if module.startswith(f"{PACKAGE}.") and there is None:
                upward.append(f"{module} -> {other} (the package imports a command)")
            elif here is not None and there is not None and there > here:
                upward.append(f"{module} ({LAYERS[here][0]}) -> {other} ({LAYERS[there][0]})")
    assert not upward, "imports from a lower layer up: " + "; ".join(sorted(upward))


def test_no_module_is_oversized():
    big = {name: n for name, path in _sources().items()
           if not path.parent == ROOT and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concern): {big}"


def test_the_root_holds_thin_commands():
    root = sorted(ROOT.glob("*.py"))
    assert len(root) <= MAX_ROOT_FILES, [p.name for p in root]
    long = {p.name: n for p in root if (n := len(p.read_text().splitlines())) > MAX_FACE_LINES}
    assert not long, f"root files over {MAX_FACE_LINES} lines (move the library code into " \
                     f"{PACKAGE}/): {long}"
    for p in root:   # no classes beyond a command's configuration, no library functions
        tree = ast.parse(p.read_text())
        classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
        assert all(name.endswith("Config") for name in classes), (p.name, classes)


def test_the_published_names_stay_importable():
    from rsnn_bfd.network.sparse import SparseLinear as packaged

    from SparseLinear import SparseLinear
    from utils import run_anova, run_cv, run_degree, run_dynamics, run_raster  # noqa: F401
    from whisker_dataset import (  # noqa: F401
        CLASS_NAMES,
        RealValuedWhiskerDataset,
        SpikingWhiskerDataset,
        load_whisker_file,
    )
    assert SparseLinear is packaged
    assert CLASS_NAMES == ("helmet", "box", "plane")
