"""The repository's layering, read from the source with `ast` (standard library only, nothing is imported).

Rules (DESIGN.md, "Which part may use which" and "The remote-code rule"):

- `modeling_opens2s/` is remote code: at module level it imports the standard library, torch, transformers, numpy
  and huggingface_hub (a dependency of transformers, for `huggingface_hub.dataclasses.strict` on the configs) and
  its flat siblings through single-level relative imports; soundfile and soxr only inside a function.
- Outside `modeling_opens2s/` no import is relative.
- Layers, bottom up: modeling_opens2s < conversion < processing < {training, evaluation, dataset_scripts,
  spaces_app, serving, benchmarks} < opens2s (the CLI). An import of our code goes to a lower layer or to its own
  folder; the top parts never import each other; no loop between folders.

Folders come from `SUBPACKAGES` in setup.py (`opens2s.<part>` -> `<part>/`); any other `opens2s.<name>` is the CLI
folder `opens2s/`, and `benchmarks.<name>` is `benchmarks/`.
"""

import ast
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
LAYERS = {
    "modeling_opens2s": 0,
    "conversion": 1,
    "processing": 2,
    "training": 3,
    "evaluation": 3,
    "dataset_scripts": 3,
    "spaces_app": 3,
    "serving": 3,
    "benchmarks": 3,
    "opens2s": 4,
}
REMOTE_CODE = "modeling_opens2s"
REMOTE_CODE_IMPORTS = {"torch", "transformers", "numpy", "huggingface_hub"}
REMOTE_CODE_LAZY_IMPORTS = {"soundfile", "soxr"}  # optional audio libraries, imported where they are used
SKIPPED_DIRS = {"tests", ".venv", "build", "dist", "artifacts"}


def subpackages(setup_py: Path) -> list[str]:
    """The `SUBPACKAGES` list (or the keys of a mapping) assigned in setup.py."""
    for node in ast.parse(setup_py.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUBPACKAGES" for t in node.targets):
            value = ast.literal_eval(node.value)
            return list(value)
    raise AssertionError(f"{setup_py} assigns no SUBPACKAGES")


def source_files(root: Path) -> list[Path]:
    """Every .py file under `root` outside tests, virtual environments, build output and hidden folders."""
    return sorted(
        path
        for path in root.rglob("*.py")
        if not any(part in SKIPPED_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in path.parts)
        and path.relative_to(root).parts[0] not in SKIPPED_DIRS
    )


def imports(path: Path):
    """`(node, inside_function)` for every import statement of a file."""

    def walk(node, inside):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, inside
            yield from walk(child, inside or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    yield from walk(ast.parse(path.read_text(), filename=str(path)), False)


def target_folder(module: str, parts: list[str]) -> str | None:
    """The repository folder an absolute import goes to, or `None` for a third-party or standard module."""
    names = module.split(".")
    if names[0] == "benchmarks":
        return "benchmarks"
    if names[0] != "opens2s":
        return None
    return names[1] if len(names) > 1 and names[1] in parts else "opens2s"


def layout_violations(root: Path) -> list[str]:
    """Every break of the rules above in the tree at `root`, as `file:line: message` strings."""
    parts = subpackages(root / "setup.py")
    problems = [
        f"setup.py: SUBPACKAGES folder {part}/ has no layer in test_layout.LAYERS"
        for part in parts
        if part not in LAYERS
    ]
    edges = {}
    for path in source_files(root):
        relative = path.relative_to(root)
        folder = relative.parts[0] if len(relative.parts) > 1 else None
        if folder is None:
            if relative.name != "setup.py":
                problems.append(f"{relative}: a Python file at the repository root belongs to no folder")
            continue
        if folder not in LAYERS:
            problem = f"{folder}/: a source folder with no layer in test_layout.LAYERS"
            problems += [problem] if problem not in problems else []
            continue
        for node, inside_function in imports(path):
            where = f"{relative}:{node.lineno}"
            if isinstance(node, ast.ImportFrom) and node.level:
                if folder != REMOTE_CODE:
                    problems.append(f"{where}: relative import outside {REMOTE_CODE}/ (use `from opens2s.<part> ...`)")
                elif node.level != 1 or (node.module and "." in node.module):
                    problems.append(f"{where}: remote code imports flat siblings only (`from .sibling import ...`)")
                elif node.module and not (root / REMOTE_CODE / f"{node.module}.py").is_file():
                    problems.append(f"{where}: no sibling {node.module}.py in {REMOTE_CODE}/")
                continue
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            for module in modules:
                target = target_folder(module, parts)
                top = module.split(".")[0]
                if folder == REMOTE_CODE:
                    if target is not None:
                        problems.append(f"{where}: remote code imports {module} (use a relative sibling import)")
                    elif not (
                        top in sys.stdlib_module_names
                        or top in REMOTE_CODE_IMPORTS
                        or (inside_function and top in REMOTE_CODE_LAZY_IMPORTS)
                    ):
                        lazy = " at module level" if top in REMOTE_CODE_LAZY_IMPORTS else ""
                        problems.append(f"{where}: remote code may not import {module}{lazy}")
                    continue
                if target is None or target == folder:
                    continue
                edges.setdefault(folder, set()).add(target)
                if LAYERS[target] >= LAYERS[folder]:
                    kind = "sideways" if LAYERS[target] == LAYERS[folder] else "up"
                    problems.append(f"{where}: {folder}/ imports {module} ({target}/), {kind} in the layers")
    cycle = find_cycle(edges)
    if cycle:
        problems.append("import loop between folders: " + " -> ".join(cycle))
    return problems


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One loop in the folder graph as `[a, b, ..., a]`, or `None`."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt, trail + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_repository_layout_holds():
    problems = layout_violations(REPO)
    assert not problems, "layering broken:\n" + "\n".join(problems)


def test_every_layer_has_source():
    """The rules above look at real folders: each layer folder exists and holds Python files."""
    files = {path.relative_to(REPO).parts[0] for path in source_files(REPO)}
    assert set(LAYERS) <= files
    assert set(subpackages(REPO / "setup.py")) <= set(LAYERS)


# ------------------------------------------------------------------ the checker catches each kind of break
GOOD_TREE = {
    "setup.py": 'SUBPACKAGES = ["modeling_opens2s", "conversion", "processing", "training", "spaces_app"]\n',
    "modeling_opens2s/configuration_x.py": "import torch\nfrom huggingface_hub.dataclasses import strict\n",
    "modeling_opens2s/modeling_x.py": (
        "import numpy as np\nfrom .configuration_x import strict\n\n\ndef read(path):\n    import soundfile\n"
    ),
    "conversion/convert.py": "from opens2s.modeling_opens2s.modeling_x import np\n",
    "processing/audio.py": "import soundfile\nfrom opens2s.conversion.convert import np\n",
    "training/train.py": "import trl\nfrom opens2s.processing.audio import soundfile\n",
    "spaces_app/app.py": "import gradio\nfrom opens2s.processing import audio\n",
    "opens2s/cli.py": "from opens2s.training.train import trl\nfrom opens2s.spaces_app import app\n",
    "benchmarks/bench.py": "from opens2s.modeling_opens2s import modeling_x\n",
    "evaluation/judge.py": "import json\n",
    "dataset_scripts/build.py": "import json\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checker_accepts_a_layered_tree(tmp_path):
    assert layout_violations(write_tree(tmp_path, GOOD_TREE)) == []


@pytest.mark.parametrize(
    "name, text, message",
    [
        pytest.param("modeling_opens2s/bad.py", "import gradio\n", "may not import gradio", id="remote-third-party"),
        pytest.param("modeling_opens2s/bad.py", "import soxr\n", "soxr at module level", id="remote-eager-soxr"),
        pytest.param(
            "modeling_opens2s/bad.py",
            "from opens2s.processing import audio\n",
            "remote code imports",
            id="remote-ours",
        ),
        pytest.param("modeling_opens2s/bad.py", "from ..x import y\n", "flat siblings only", id="remote-two-levels"),
        pytest.param(
            "modeling_opens2s/bad.py", "from .missing import y\n", "no sibling missing.py", id="remote-ghost"
        ),
        pytest.param("processing/bad.py", "from .audio import soundfile\n", "relative import outside", id="relative"),
        pytest.param("conversion/bad.py", "from opens2s.training.train import trl\n", "up in the layers", id="up"),
        pytest.param(
            "spaces_app/bad.py", "from opens2s.training import train\n", "sideways in the layers", id="sideways"
        ),
        pytest.param("training/bad.py", "import opens2s.cli\n", "up in the layers", id="cli-is-top"),
        pytest.param("processing/bad.py", "from benchmarks import bench\n", "up in the layers", id="benchmarks"),
        pytest.param("webui/app.py", "import json\n", "with no layer", id="unknown-folder"),
    ],
)
def test_checker_reports_each_violation(tmp_path, name, text, message):
    write_tree(tmp_path, {**GOOD_TREE, name: text})
    problems = layout_violations(tmp_path)
    assert len(problems) >= 1 and any(message in problem for problem in problems), problems


def test_checker_finds_an_import_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}}) is None
