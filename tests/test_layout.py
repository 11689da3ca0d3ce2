"""The shape of the project: layers, thin scripts, the console command, a frozen config."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from study.config import ConfigError, StudyConfig
from tests.conftest import ROOT, script_env


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_the_optuna_side_names_neither_torch_nor_objectives_nor_the_wiring():
    for path in _modules("study"):
        imported = _imports(path)
        assert not any(n == "torch" or n.startswith("torch.") for n in imported), path
        assert not any(n.startswith(("objectives", "batchsize_study")) for n in imported), path


def test_the_pytorch_side_never_climbs_back_to_orchestration_reports_or_the_wiring():
    for path in _modules("objectives"):
        imported = _imports(path)
        upward = [
            n
            for n in imported
            if n.startswith(("study.orchestrate", "study.report", "batchsize_study"))
        ]
        assert not upward, f"{path} imports {upward}"


def test_the_wiring_is_the_one_place_that_imports_both_sides():
    wiring = _modules("batchsize_study")
    both = [p for p in wiring if {n.split(".")[0] for n in _imports(p)} >= {"study", "objectives"}]
    assert {p.name for p in both} == {"commands.py", "api.py"}


PACKAGES = ("batchsize_study", "study", "objectives")


def _project_modules() -> dict[str, Path]:
    """Every module of the project's packages by its dotted name (a package by its own)."""
    modules = {}
    for package in PACKAGES:
        for path in _modules(package):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _project_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports, at any depth (inside functions and
    ``TYPE_CHECKING`` blocks too): ``from a import b`` is ``a.b`` where that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        else:
            continue
        for name in names:
            parts = name.split(".")
            owner = next(
                (
                    ".".join(parts[:k])
                    for k in range(len(parts), 0, -1)
                    if ".".join(parts[:k]) in modules
                ),
                None,
            )
            if owner is not None:
                found.add(owner)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as its modules in order, or ``[]`` when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = 2
        path.pop()
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_no_import_cycles_among_the_project_modules():
    modules = _project_modules()
    graph = {name: _project_imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check bites


def test_the_task_contract_is_a_leaf_that_imports_nothing_of_the_project():
    modules = _project_modules()
    contract = ROOT / "objectives" / "contract.py"
    assert _project_imports(contract, modules) == set()
    from objectives import contract as leaf
    from objectives import tasks
    from study.record import DIRECTIONS

    assert leaf.DIRECTIONS == DIRECTIONS  # the same words on both sides of the boundary
    for name in ("Task", "Metric", "StepHook", "TaskError"):  # the public paths still work
        assert getattr(tasks, name) is getattr(leaf, name)


def test_every_module_opens_with_a_docstring_that_says_its_idea():
    for path in _project_modules().values():
        assert ast.get_docstring(ast.parse(path.read_text())), path


def test_the_report_figures_read_in_steps_of_one_screen():
    for path in _modules("study/report/figures"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path}:{node.lineno} {node.name} is {length} lines"


def test_nothing_outside_tests_imports_from_tests():
    for package in ("batchsize_study", "study", "objectives", "scripts", "benchmarks"):
        for path in _modules(package):
            assert not any(n.startswith("tests") for n in _imports(path)), path


def test_scripts_are_thin_and_edit_no_import_path():
    scripts = sorted((ROOT / "scripts").glob("*.py"))
    assert {p.name for p in scripts} == {
        "run_study.py",
        "probe.py",
        "plan.py",
        "report.py",
        "dashboard.py",
        "noise_scale.py",
        "branch.py",
    }
    for path in [*scripts, *_modules("benchmarks")]:
        text = path.read_text()
        assert "sys.path" not in text, path
    for path in scripts:
        assert len(path.read_text().splitlines()) <= 40, path
        assert _imports(path) <= {"sys", "batchsize_study.commands"}, path


def test_console_command_lists_its_commands_and_refuses_an_unknown_one_in_one_line():
    listed = subprocess.run(
        [sys.executable, "-m", "batchsize_study.commands", "--help"],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=60,
    )
    assert listed.returncode == 0
    for name in ("run", "probe", "plan", "report", "dashboard", "noise-scale"):
        assert f"  {name} " in listed.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "batchsize_study.commands", "tune"],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=60,
    )
    assert wrong.returncode == 2
    assert wrong.stderr.strip().count("\n") == 0
    assert "unknown command 'tune'" in wrong.stderr


def test_console_command_run_takes_the_scripts_flags():
    proc = subprocess.run(
        [sys.executable, "-m", "batchsize_study.commands", "run", "--trials", "0"],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--trials 0 must be at least 1" in proc.stderr
    assert "batchsize-study run" in proc.stderr


def test_the_config_is_frozen_and_validate_returns_a_filled_in_copy():
    config = StudyConfig(gpus=["0", "1"], workers_per_gpu=2, objectives=["accuracy"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.trials = 3  # type: ignore[misc]
    checked = config.validate()
    assert checked is not config
    assert config.storage is None and config.workers == 1 and config.objectives == ["accuracy"]
    assert checked.storage == "sqlite:///storage/batch-size.db"
    assert checked.workers == 4 and checked.gpus == ("0", "1")
    assert checked.objectives == ("metric",)  # "accuracy" is the older name of "metric"
    assert checked.validate() == checked
    with pytest.raises(ConfigError, match="--trials 0 must be at least 1"):
        dataclasses.replace(checked, trials=0).validate()


def test_redirected_output_gets_plain_counted_lines_not_a_progress_bar(tmp_path):
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_study.py"), "--trials", "2"]
        + ["--epochs", "1", "--model", "mlp", "--hidden", "8", "--max-batch-size", "64"]
        + ["--storage", url, "--artifact-dir", "none", "--checkpoint-dir", "none"],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr
    counted = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in counted] == ["[1/2", "[2/2"]
