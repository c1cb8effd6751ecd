"""The package's shape: which subpackage may import which, and no module reaches into another's
private names. Read by parsing the source, so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import lorainbox

PACKAGE = Path(lorainbox.__file__).parent

ALLOWED = {
    "core": set(),
    "drop": {"core"},
    "models": {"core"},
    "export": {"core"},
    "platform": {"core"},
    "trainers": {"core", "drop", "models"},
    "worker": {"core", "drop", "models", "export", "trainers"},
    "pipeline": {"core", "drop", "models", "export", "platform", "trainers", "worker"},
    "ui": {"core", "drop", "models", "export", "platform", "trainers", "worker", "pipeline"},
}
"""Each layer imports only those below it: a worker or trainer never reaches the daemon's
pipeline or the UI, so it runs alone in its subprocess."""

EXCEPTIONS = {("pipeline", "lorainbox.ui.status_server")}
"""The daemon serves the status page; the page's code lives with the rest of the UI."""


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def _modules() -> list[tuple[str, str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        sub = parts[0] if len(parts) > 1 else ""
        out.append((sub, ".".join(("lorainbox", *parts)), path))
    return out


def test_every_subpackage_imports_only_the_layers_below_it() -> None:
    wrong = []
    for sub, name, path in _modules():
        if not sub:
            continue
        assert sub in ALLOWED, f"{sub}/ is a new subpackage: give it a place in ALLOWED"
        for module, _ in _imports(path):
            parts = module.split(".")
            if parts[0] != "lorainbox" or len(parts) < 2 or parts[1] == sub:
                continue
            if parts[1] not in ALLOWED[sub] and (sub, module) not in EXCEPTIONS:
                wrong.append(f"{name} imports {module}")
    assert wrong == []


def test_no_module_imports_another_modules_private_names() -> None:
    wrong = [
        f"{name} imports {module}.{n}"
        for _, name, path in _modules()
        for module, names in _imports(path)
        if module.startswith("lorainbox") and module != name
        for n in names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert wrong == []


def test_the_worker_never_loads_the_daemon() -> None:
    """What ``python -m lorainbox.worker`` loads, measured in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys, lorainbox.worker.main; "
        "print(sorted(m for m in sys.modules if m.startswith(('lorainbox.pipeline', 'lorainbox.ui'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
