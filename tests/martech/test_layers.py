"""Models hold fields, constraints and cheap predicates; they import no
service (a service imports its models, never the other way round), so a
model module can be loaded and read on its own."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _installed_models_modules() -> list[str]:
    """Every models.py of the project's installed apps (a new app's too)."""
    from django.apps import apps

    found = []
    for config in apps.get_app_configs():
        path = Path(config.path) / "models.py"
        if path.is_file() and path.resolve().is_relative_to(ROOT):
            found.append(str(path.resolve().relative_to(ROOT)))
    return sorted(found)


MODELS_MODULES = _installed_models_modules()


def test_every_app_models_module_is_checked():
    # The apps that hold models today; a new app's models.py joins the check
    # above by itself, this list only proves the discovery finds them.
    assert set(MODELS_MODULES) >= {
        "martech/models.py", "martech/scoring/models.py", "martech/crm/models.py", "martech/privacy/models.py",
        "routing/models.py", "nurture/models.py", "attribution/models.py",
    }


@pytest.mark.parametrize("models", MODELS_MODULES)
def test_models_import_no_service(models):
    services = sorted(m for m in _imported_modules(ROOT / models)
                      if ".services" in f".{m}" or m.split(".")[-1] in {"services", "notify", "tasks"})
    assert services == [], f"{models} imports {services}"


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "models.py"
    sample.write_text("def clean():\n    from martech.services.leads import CRM_KEYS\n")
    assert "martech.services.leads" in _imported_modules(sample)
