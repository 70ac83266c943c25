"""The packages ``functions/build.py`` makes from the *real* function sources are complete: each entry
module imports from the build directory alone (the repository is not on ``sys.path``), and every
third-party distribution it loads is in the unit's ``requirements.txt`` or required by one that is.

Each import runs in a fresh interpreter, the way the platform loads the package. Every cloud's runtime
SDK is installed in the test environment, so an import error here is a packaging error, never skipped.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from functions.build import AWS_HANDLERS, AZURE_UNIT_MODULES, GCP_ENTRY_POINTS, build
from infra_harness import REPO_ROOT

# What the platform imports first in each unit: Lambda the handler's module, Cloud Functions main.py,
# Azure function_app.py (plus each unit trigger module azure_app.py is meant to register).
ENTRY_MODULES = {
    "aws": {unit: [handler.rsplit(".", 1)[0] for u, handler in AWS_HANDLERS.values() if u == unit]
            for unit in {u for u, _ in AWS_HANDLERS.values()}},
    "gcp": {unit: ["main"] for unit in GCP_ENTRY_POINTS},
    "azure": {"function_app": ["function_app", *(f"functions.{unit}.azure" for unit in AZURE_UNIT_MODULES)]},
}

# Distributions a library imports optionally (inside try/except ImportError) when they happen to be
# installed: their absence on the platform changes nothing the functions use.
OPTIONAL_IMPORTS = {
    "bcrypt",  # cryptography's OpenSSH key loader: only bcrypt-encrypted SSH keys need it
    "certifi",  # botocore prefers its CA bundle when installed, else uses the one it ships
}

# Runs inside the unit directory: the build output first on sys.path, the checkout removed (the
# editable install of wardgate points at it), then reports which file every loaded module came from.
_PROBE = """
import importlib, json, sys
before = set(sys.modules)  # what the interpreter itself loaded (site hooks): not the package's doing
repo = {repo!r}
sys.path = [p for p in sys.path if p not in ("", repo, repo + "/gateway_container")]
sys.path.insert(0, ".")
for name in {modules!r}:
    importlib.import_module(name)
files = {{name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())
         if name not in before}}
print(json.dumps(files))
"""


def _loaded_files(unit_dir: Path, modules: list[str]) -> dict[str, str | None]:
    result = subprocess.run([sys.executable, "-c", _PROBE.format(repo=str(REPO_ROOT), modules=modules)],
                            cwd=unit_dir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{unit_dir.name}: importing {modules} from the package failed:\n{result.stderr}"
    return json.loads(result.stdout.splitlines()[-1])


@functools.cache
def _file_owners() -> dict[str, str]:
    """Every installed file → the distribution (canonical name) that installed it."""
    return {str(distribution.locate_file(file)): canonicalize_name(distribution.metadata["Name"])
            for distribution in metadata.distributions() for file in distribution.files or ()
            if file.suffix in (".py", ".so", ".pyd")}


def _owning_distributions(paths: set[str]) -> set[str]:
    owners = _file_owners()
    unowned = {path for path in paths if path not in owners}
    assert not unowned, f"loaded files no installed distribution claims: {sorted(unowned)[:5]}"
    return {owners[path] for path in paths}


def _closure(requirements: str) -> set[str]:
    """Every distribution pip would install for ``requirements`` (markers and extras evaluated here)."""
    seen: set[str] = set()
    pending = [Requirement(line) for line in requirements.splitlines() if line.strip()]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.distribution(name).requires or ():
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": extra})
                                           for extra in ("", *requirement.extras)):
                pending.append(child)
    return {key.split("[")[0] for key in seen}


@pytest.fixture(scope="module")
def real_builds(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-functions")
    return {cloud: build(cloud, out) for cloud in ENTRY_MODULES}


@pytest.mark.parametrize("cloud, unit", [(c, u) for c, units in ENTRY_MODULES.items() for u in sorted(units)])
def test_each_entry_module_imports_from_its_package_with_declared_requirements(real_builds, cloud, unit):
    unit_dir = real_builds[cloud][unit]
    loaded = _loaded_files(unit_dir, ENTRY_MODULES[cloud][unit])
    ours = {name: path for name, path in loaded.items() if name.split(".")[0] in ("functions", "wardgate", "main",
                                                                                    "function_app")}
    outside = {name: path for name, path in ours.items() if path and not Path(path).is_relative_to(unit_dir)}
    assert outside == {}, f"loaded from outside the package: {outside}"
    site_files = {path for name, path in loaded.items()
                  if path and name not in ours and "site-packages" in Path(path).parts}
    declared = _closure((unit_dir / "requirements.txt").read_text())
    missing = _owning_distributions(site_files) - declared - OPTIONAL_IMPORTS
    assert missing == set(), f"{cloud}/{unit} imports {sorted(missing)} but requirements.txt does not bring them"


def test_the_azure_package_holds_the_rotation_timer_module(real_builds):
    root = real_builds["azure"]["function_app"]
    assert (root / "functions" / "key_rotation" / "azure.py").read_bytes() == \
        (REPO_ROOT / "functions" / "key_rotation" / "azure.py").read_bytes()


@pytest.mark.parametrize("cloud", sorted(ENTRY_MODULES))
def test_every_cloud_requires_the_binary_postgres_driver(real_builds, cloud):
    for unit_dir in real_builds[cloud].values():
        names = {Requirement(line).name: Requirement(line) for line in
                 (unit_dir / "requirements.txt").read_text().splitlines()}
        assert names["psycopg"].extras == {"binary"}, unit_dir
