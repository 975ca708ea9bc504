"""SteerLab is an installable project: the `steerlab` command works from any folder, and the
package's dependencies are requirements.txt (one source of truth)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import ROOT

STEERLAB = Path(sys.executable).parent / "steerlab"


def _steerlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert STEERLAB.is_file(), f"{STEERLAB} is missing: `source scripts/env.sh` installs the project (pip install -e .)"
    return subprocess.run([str(STEERLAB), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_console_command_runs_from_any_folder(tmp_path: Path) -> None:
    done = _steerlab("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("run", "worker", "status", "list", "export", "report", "sweep", "schema"):
        assert command in done.stdout


def test_schema_command_writes_the_json_schema(tmp_path: Path) -> None:
    done = _steerlab("schema", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert schema["title"] == "SteerLab experiment file"
    assert {"method_add", "intervention", "scorer_words", "variant"} <= set(schema["$defs"])


def _requirement_lines(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def test_installed_dependencies_are_requirements_txt() -> None:
    declared = {str(r) for r in _requirement_lines(ROOT / "requirements.txt")}
    installed = {str(Requirement(r)) for r in requires("steerlab") or []}
    assert installed == declared


def test_wheel_holds_every_package_and_the_migrations(tmp_path: Path) -> None:
    # Built from a copy, so that the build leaves nothing (build/, *.egg-info) in the working tree.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(ROOT / name, source / name)
    for package in ("engine", "db", "service", "dashboard"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    done = subprocess.run([*build, "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("steerlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "engine/spec.py",
        "engine/methods/add.py",
        "db/migrate.py",
        "db/migrations/env.py",
        "db/migrations/script.py.mako",
        "db/migrations/versions/0001_steerlab_0_1.py",
        "service/cli.py",
        "dashboard/app.py",
        "dashboard/views/variants.py",
    ):
        assert expected in names, expected
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "steerlab = service.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith("tests/") for n in names)
