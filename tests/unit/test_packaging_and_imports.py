"""One installed namespace, and dependencies that point one way (listeners -> core <- emitters).

The wheel is built from this checkout and unpacked the way pip lays it out in site-packages;
import-linter then checks the contracts in setup.cfg against that installed tree (the repo's
listeners/ and emitters/ folders only become lifecycle_stats.listeners / .emitters there).
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> pathlib.Path:
    """site-packages as `pip install .` leaves it (our package only, no dependencies)."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy without build/ or egg-info: setuptools reuses an in-tree build/lib, so a
    # stale one from an earlier build would ship modules the checkout no longer has.
    source = root / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".ceilometer-venv", ".*-venv", "build", "*.egg-info", "__pycache__",
        ".hypothesis", ".pytest_cache"), symlinks=True)
    subprocess.run([str(BIN / "pip"), "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), str(source)], check=True, cwd=root)
    [wheel] = (root / "dist").glob("lifecycle_stats-*.whl")
    site = root / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def lint_imports(site: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lint-imports"), "--config", str(REPO / "setup.cfg")],
                          cwd=site, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)


def test_the_wheel_installs_only_the_lifecycle_stats_namespace(installed):
    top = {p.name for p in installed.iterdir()}
    assert top == {"lifecycle_stats", "lifecycle_stats-0.1.0.dist-info"}
    package = installed / "lifecycle_stats"
    for sub in ("listeners/bus.py", "emitters/messaging.py", "capture/flush.py",
                "publishing/schemas/delete_samples.schema.json", "reading/inspector.py"):
        assert (package / sub).is_file(), sub
    entry_points = (installed / "lifecycle_stats-0.1.0.dist-info/entry_points.txt").read_text()
    assert "lifecycle_stats.emitters.messaging:MessagingConduit" in entry_points
    assert "= emitters." not in entry_points and "= listeners." not in entry_points


def test_the_editable_install_maps_the_folders_without_top_level_names(tmp_path):
    probe = ("import importlib.util as u, lifecycle_stats.listeners.bus, "
             "lifecycle_stats.emitters.messaging as m; "
             "print(u.find_spec('listeners'), u.find_spec('emitters'), m.__name__)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["None", "None", "lifecycle_stats.emitters.messaging"]


def test_dependency_contracts_hold(installed):
    result = lint_imports(installed)
    assert result.returncode == 0, result.stdout + result.stderr
    declared = (REPO / "setup.cfg").read_text().count("[importlinter:contract:")
    assert f"{declared} kept, 0 broken" in result.stdout


def lint_with_a_leak(installed, tmp_path, module: str, line: str) -> subprocess.CompletedProcess:
    """import-linter on a copy of the installed tree with one extra module holding line."""
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    (site / (module.replace(".", "/") + ".py")).write_text(line + "  # noqa\n")
    return lint_imports(site)


def test_a_core_module_importing_a_listener_breaks_the_contract(installed, tmp_path):
    result = lint_with_a_leak(installed, tmp_path, "lifecycle_stats.capture.leak",
                              "from lifecycle_stats.listeners import bus")
    assert result.returncode != 0
    assert "lifecycle_stats.capture.leak -> lifecycle_stats.listeners.bus" in result.stdout


def test_the_wheel_ships_no_test_scaffolding(installed):
    """The guest factory (it destroys domains by name), nova's side and the shared fakes live
    in tests/support/; the demo keeps what it needs in cmd/demo_nova.py (test:///default)."""
    shipped = [p.relative_to(installed).as_posix() for p in installed.rglob("*.py")]
    scaffolding = [name for name in shipped
                   if {"testing", "tests", "support"} & set(name.split("/")[:-1])
                   or name.rsplit("/", 1)[-1].startswith(("test_", "conftest"))]
    assert scaffolding == []
    sources = {name: (installed / name).read_text() for name in shipped}
    assert [name for name, text in sources.items()
            if "sweep_leftovers" in text or "GuestFactory" in text] == []
    assert "lifecycle_stats/cmd/demo_nova.py" in shipped


def test_a_product_module_importing_test_scaffolding_breaks_the_contract(installed, tmp_path):
    result = lint_with_a_leak(installed, tmp_path, "lifecycle_stats.cmd.leak",
                              "from tests.support import guests")
    assert result.returncode != 0
    assert "lifecycle_stats.cmd.leak -> tests" in result.stdout


def test_no_test_module_imports_another():
    """Fakes, nova's payloads and buses live once, in tests/support/ (or an integration helper
    module such as harness.py); a test module never imports from a test module."""
    import ast

    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            offenders += [f"{path.relative_to(REPO)}: {name}" for name in names
                          if name.startswith("tests.") and
                          name.rsplit(".", 1)[-1].startswith("test_")]
    assert offenders == []
