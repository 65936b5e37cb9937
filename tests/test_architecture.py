"""The package's shape: imports form a stack, private names stay private, every word is defined once.

Read from the source with ``ast``, so function-level imports count as much as
top-level ones: a cycle hidden inside a function is still a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conntrace import conf, names

PACKAGE = Path(conf.__file__).resolve().parent
README = PACKAGE.parent / "README.md"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(tree: ast.AST) -> dict[str, str]:
    """Return {local name: conntrace module} for every conntrace module a file imports, at any depth."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("conntrace"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                # `from conntrace import records` names a module; `from conntrace import install`
                # names something of the package's __init__.
                target = candidate if candidate in MODULES else node.module
                found[alias.asname or alias.name] = target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("conntrace"):
                    found[alias.asname or alias.name] = alias.name
    return found


def import_graph() -> dict[str, set[str]]:
    """Return {module: the conntrace modules it imports} for every module of the package."""
    return {
        name: set(imported_modules(ast.parse(path.read_text())).values()) - {name}
        for name, path in MODULES.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """Return one import cycle as a list of modules, or [] when the graph is a stack."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return []


def test_the_package_has_no_import_cycle_even_through_function_level_imports():
    assert find_cycle(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def private_uses(path: Path) -> list[str]:
    """Return every ``module._name`` of another conntrace module that ``path`` uses."""
    tree = ast.parse(path.read_text())
    modules = {local: target for local, target in imported_modules(tree).items() if target in MODULES}
    uses = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and re.match(r"_[^_]", node.attr)
        ):
            uses.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("conntrace"):
            uses += [f"{node.module}.{a.name}" for a in node.names if re.match(r"_[^_]", a.name)]
    return uses


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(name):
    assert private_uses(MODULES[name]) == []


def test_no_two_words_of_the_vocabulary_share_a_value():
    values = [member.value for vocabulary in names.VOCABULARY for member in vocabulary]
    assert sorted({v for v in values if values.count(v) > 1}) == []


def test_words_render_as_their_plain_value_in_json_and_in_key_value_lines():
    import json

    assert json.dumps({"outcome": names.Outcome.CLOSED}) == '{"outcome": "closed"}'
    assert repr(names.Outcome.ALREADY_CLOSED) == "'already_closed'"
    assert f"{names.State.ENDED}" == str(names.State.ENDED) == "ended"


def readme_settings_block() -> str:
    text = README.read_text()
    start = text.index("CONNTRACE = {", text.index("## Settings"))
    return text[start : text.index("}\n", start)]


@pytest.mark.parametrize("setting", conf.SETTINGS, ids=lambda s: s.key)
def test_the_readme_settings_block_shows_every_setting_with_its_default(setting):
    default = list(setting.default) if isinstance(setting.default, tuple) else setting.default
    assert f'"{setting.key}": {default!r},'.replace("'", '"') in readme_settings_block()


def test_the_readme_settings_block_shows_nothing_else():
    keys = re.findall(r'^\s+"([A-Z_]+)":', readme_settings_block(), re.MULTILINE)
    assert keys == [setting.key for setting in conf.SETTINGS]
