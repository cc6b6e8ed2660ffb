"""Dependencies point inwards (DESIGN §9)."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_domain_imports_only_itself_the_standard_library_and_eventsourcing() -> None:
    allowed_roots = set(sys.stdlib_module_names) | {"eventsourcing", "__future__"}
    offenders = []
    for path in sorted((ROOT / "domain").glob("*.py")):
        for module in imported_modules(path):
            root = module.split(".")[0]
            if module.startswith("pli.domain") or root in allowed_roots:
                continue
            offenders.append(f"{path.name}: {module}")
    assert offenders == []


def test_import_linter_layers_hold() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
