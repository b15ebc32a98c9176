"""The package's layers: no import cycle between fedagg's modules, errors at
the bottom, report/ free of training code, flower/ free of Hydra."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from fedagg_testing import ROOT

PKG = ROOT / "fedagg"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, top_level_only: bool) -> set[str]:
    """fedagg modules ``path`` imports (relative imports resolved); with
    ``top_level_only`` only the imports that run when the module is imported."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for n in ast.walk(tree):  # `if TYPE_CHECKING:` imports never run
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            n.body = []
    nodes = list(tree.body) if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports under module-level if/try blocks
        stack, nodes = nodes, []
        while stack:
            n = stack.pop()
            nodes.append(n)
            if isinstance(n, (ast.If, ast.Try)):
                stack.extend(n.body + n.orelse + getattr(n, "finalbody", []) +
                             [h for h in getattr(n, "handlers", [])])
            if isinstance(n, ast.ExceptHandler):
                stack.extend(n.body)
    out: set[str] = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names if a.name.split(".")[0] == "fedagg")
        elif isinstance(n, ast.ImportFrom):
            if n.module == "__future__":
                continue
            if n.level:
                base = package.split(".")
                base = base[: len(base) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            if target.split(".")[0] != "fedagg":
                continue
            for a in n.names:  # `from . import x` imports the submodule x
                sub = f"{target}.{a.name}"
                out.add(sub if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (ROOT / Path(*sub.split(".")) / "__init__.py").exists() else target)
    return {m for m in out if m != mod}


def graph(top_level_only: bool) -> dict[str, set[str]]:
    files = [p for p in PKG.rglob("*.py") if "conf" not in p.parts]
    mods = {module_name(p): p for p in files}
    g: dict[str, set[str]] = {}
    for m, p in mods.items():
        deps = set()
        for d in imports_of(p, top_level_only):
            while d and d not in mods:  # a name imported from a module
                d = d.rpartition(".")[0]
            if d and d != m:
                deps.add(d)
        g[m] = deps
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in sorted(g.get(m, ())):
            if d.startswith(m + ".") or m.startswith(d + ".") and d == m.rpartition(".")[0]:
                continue  # a package and its own submodules
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        path.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def test_no_import_cycle_at_import_time():
    assert find_cycle(graph(top_level_only=True)) is None, find_cycle(graph(top_level_only=True))


def test_no_import_cycle_counting_imports_inside_functions():
    assert find_cycle(graph(top_level_only=False)) is None, find_cycle(graph(top_level_only=False))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_errors_module_is_the_bottom_layer():
    assert graph(top_level_only=False)["fedagg.errors"] == set()


def test_report_imports_no_training_code():
    training = ("fedagg.task", "fedagg.runtime", "fedagg.flower", "fedagg.experiment", "fedagg.aggregators",
                "fedagg.data", "fedagg.env")
    g = graph(top_level_only=False)
    for m, deps in g.items():
        if m.startswith("fedagg.report"):
            bad = sorted(d for d in deps if d.startswith(training))
            assert not bad, (m, bad)


@pytest.mark.parametrize("mod", ["fedagg.flower", "fedagg.flower.client_app", "fedagg.aggregators"])
def test_flower_and_aggregators_import_without_hydra(mod):
    code = f"import sys, {mod}; bad = [m for m in sys.modules if m.split('.')[0] == 'hydra']; " \
           "print(bad); sys.exit(1 if bad else 0)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr[-2000:]


def test_flower_source_does_not_mention_hydra():
    for p in (PKG / "flower").glob("*.py"):
        tree = ast.parse(p.read_text())
        for n in ast.walk(tree):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module or ""] if isinstance(n, ast.ImportFrom) else []
            assert not any(x.split(".")[0] == "hydra" for x in names), p


def test_a_clientapp_process_imports_no_strategy_side():
    """Every Ray worker and SuperNode imports the ClientApp: it must not pull in the strategy, the aggregators'
    graph library, Hydra/omegaconf, Ray, pandas or matplotlib (each costs start-up in every worker)."""
    heavy = ("fedagg.flower.strategy", "fedagg.flower.rules", "networkx", "omegaconf", "hydra", "ray", "pandas",
             "matplotlib")
    code = ("import sys, fedagg.flower.client_app; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"the ClientApp imports {out.stdout.strip()}"
    lazy = subprocess.run([sys.executable, "-c", "from fedagg.flower import strategy_for, FedaggStrategy; print('ok')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert lazy.stdout.strip() == "ok", lazy.stderr[-2000:]
