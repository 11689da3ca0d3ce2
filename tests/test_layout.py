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


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_optuna_side_never_names_torch_or_objectives_except_the_command_line_edge():
    for path in _modules("study"):
        # study/compat.py reaches torch's private internals inside its functions only
        imported = _top_level_imports(path) if path.name == "compat.py" else _imports(path)
        assert not any(n == "torch" or n.startswith("torch.") for n in imported), path
        if path.name not in ("commands.py", "api.py"):  # the edges that hand the backend in
            assert not any(n.startswith("objectives") for n in imported), path


def test_the_pytorch_side_never_climbs_back_to_orchestration_or_reports():
    for path in _modules("objectives"):
        imported = _imports(path)
        upward = [
            n
            for n in imported
            if n.startswith(("study.orchestrate", "study.commands", "study.report"))
        ]
        assert not upward, f"{path} imports {upward}"


def test_nothing_outside_tests_imports_from_tests():
    for package in ("study", "objectives", "scripts", "benchmarks"):
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
        assert _imports(path) <= {"sys", "study.commands"}, path


def test_console_command_lists_its_commands_and_refuses_an_unknown_one_in_one_line():
    listed = subprocess.run(
        [sys.executable, "-m", "study.commands", "--help"],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=60,
    )
    assert listed.returncode == 0
    for name in ("run", "probe", "plan", "report", "dashboard", "noise-scale"):
        assert f"  {name} " in listed.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "study.commands", "tune"],
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
        [sys.executable, "-m", "study.commands", "run", "--trials", "0"],
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
