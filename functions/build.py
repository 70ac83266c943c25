"""Package the serverless functions for one cloud: one directory per deployable unit.

``build(cloud, out_dir)`` returns ``{unit: directory}``; the Pulumi programs upload exactly these
directories, so what is deployed is what this step built (tests check both sides). The layout it
expects is fixed in ``functions/README.md``.

Each unit directory holds ``functions/`` (only what that unit needs; Azure: ``azure_app.py``, every
handler and the per-unit trigger modules of :data:`AZURE_UNIT_MODULES`), the ``wardgate`` package
(without ``devtools/``), the entry point file the platform looks for (GCP ``main.py``, Azure
``function_app.py`` + ``host.json``) and ``requirements.txt``. Nothing is pip-installed here: the
platforms install ``requirements.txt`` at deploy time (Cloud Functions, Azure remote build), and for
Lambda the dependencies are vendored on the deploying machine (see ``functions/README.md``).

Output is deterministic (files written in sorted order, fixed mtimes and modes), so an unchanged
source tree gives an unchanged archive and Pulumi sees no change.

CLI: ``python functions/build.py --cloud aws --out DIR``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CLOUDS = ("aws", "gcp", "azure")
UNITS = ("approval", "evidence_export", "key_rotation")
# 1980-01-01T00:00:00Z: the earliest time a zip entry can record, so archives and trees agree.
FIXED_MTIME = 315532800
_SKIPPED_DIRS = {"__pycache__", "devtools", ".pytest_cache"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}

# GCP entry points per unit (functions-framework names), re-exported by the generated main.py.
GCP_ENTRY_POINTS = {
    "approval": ("notifier", "webhook"),
    "evidence_export": ("export",),
    "key_rotation": ("rotate",),
}
# Lambda handler strings per function, all in the unit's package.
AWS_HANDLERS = {
    "notifier": ("approval", "functions.approval.aws.notifier"),
    "webhook": ("approval", "functions.approval.aws.webhook"),
    "evidence_export": ("evidence_export", "functions.evidence_export.aws.handler"),
    "key_rotation": ("key_rotation", "functions.key_rotation.aws.handler"),
}
# Units whose Azure triggers live in their own module, registered by ``functions/azure_app.py``
# (``from functions.<unit> import azure``): packaged with the Function App, required.
AZURE_UNIT_MODULES = ("key_rotation",)
# Which packages of pyproject's extras each cloud's functions need at run time. psycopg (the key
# rotation's PostgreSQL driver) comes as ``psycopg[binary]``: Lambda's and the Functions runtimes'
# images have no libpq, and the binary wheel bundles it.
_CLOUD_PACKAGES = {
    "aws": ("boto3", "aws-lambda-powertools", "psycopg"),
    "gcp": ("google-cloud-", "functions-framework", "cloudevents", "psycopg"),
    "azure": ("azure-", "psycopg"),
}
_HOST_JSON = {
    "version": "2.0",
    "extensionBundle": {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"},
}


class BuildError(Exception):
    """The function sources are incomplete or the cloud is unknown; the message names what is wrong."""


def build(cloud: str, out_dir: Path, source_root: Path = REPO_ROOT,
          functions_dir: Path | None = None, vendor_dir: Path | None = None) -> dict[str, Path]:
    """Package ``cloud``'s functions under ``out_dir/<cloud>/``; returns ``{unit: directory}``
    (AWS and GCP: ``approval``, ``evidence_export``, ``key_rotation``; Azure: ``function_app``).

    ``source_root`` holds ``gateway_container/wardgate`` and ``pyproject.toml``; ``functions_dir``
    (default ``source_root/functions``) holds the function sources. ``vendor_dir`` (Lambda only, whose
    platform installs nothing) is a directory of dependencies the deployer installed beforehand with
    ``pip install --target``; its contents are copied into every unit."""
    if cloud not in CLOUDS:
        raise BuildError(f"unknown cloud {cloud!r} (one of {', '.join(CLOUDS)})")
    source_root = Path(source_root)
    functions_src = Path(functions_dir) if functions_dir is not None else source_root / "functions"
    wardgate_src = source_root / "gateway_container" / "wardgate"
    if not (wardgate_src / "__init__.py").is_file():
        raise BuildError(f"{wardgate_src / '__init__.py'} is missing: the wardgate package is packaged with "
                         "every function")
    requirements = _requirements(source_root / "pyproject.toml", cloud)
    vendored: dict[str, Path | str] = {}
    if vendor_dir is not None:
        if cloud != "aws":
            raise BuildError(f"vendor_dir is for Lambda only: {cloud} installs requirements.txt at deploy time")
        if not Path(vendor_dir).is_dir():
            raise BuildError(f"vendor directory {vendor_dir} does not exist")
        vendored = {p.relative_to(vendor_dir).as_posix(): p for p in sorted(Path(vendor_dir).rglob("*"))
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix not in _SKIPPED_SUFFIXES}
    target_root = Path(out_dir) / cloud
    if target_root.exists():
        shutil.rmtree(target_root)

    if cloud == "azure":
        files = {"functions/azure_app.py": _required(functions_src, "azure_app.py", "the Azure Functions app")}
        for unit in UNITS:
            files.update(_unit_files(functions_src, unit, entry="azure" if unit in AZURE_UNIT_MODULES else None))
        files["function_app.py"] = ("# Generated by functions/build.py: the Azure Functions v2 entry point.\n"
                                    "from functions.azure_app import app  # noqa: F401\n")
        files["host.json"] = json.dumps(_HOST_JSON, indent=2, sort_keys=True) + "\n"
        return {"function_app": _write_unit(target_root / "function_app", files, wardgate_src, requirements)}

    built = {}
    for unit in UNITS:
        files = {**vendored, **_unit_files(functions_src, unit, entry=cloud)}
        if cloud == "gcp":
            files["main.py"] = _gcp_main(unit)
        built[unit] = _write_unit(target_root / unit, files, wardgate_src, requirements)
    return built


def _required(functions_src: Path, relative: str, role: str) -> Path:
    path = functions_src / relative
    if not path.is_file():
        raise BuildError(f"{path} is missing: {role} (layout: functions/README.md)")
    return path


def _unit_files(functions_src: Path, unit: str, entry: str | None) -> dict[str, Path | str]:
    """The ``functions/`` files one unit needs: its handler, its cloud entry point, package markers."""
    init = functions_src / "__init__.py"
    files: dict[str, Path | str] = {"functions/__init__.py": init if init.is_file() else ""}
    files[f"functions/{unit}/handler.py"] = _required(functions_src, f"{unit}/handler.py",
                                                      f"the cloud-agnostic handler of {unit}")
    if entry is not None:
        files[f"functions/{unit}/{entry}.py"] = _required(functions_src, f"{unit}/{entry}.py",
                                                          f"the {entry.upper()} entry point of {unit}")
    unit_init = functions_src / unit / "__init__.py"
    files[f"functions/{unit}/__init__.py"] = unit_init if unit_init.is_file() else ""
    return files


def _gcp_main(unit: str) -> str:
    names = ", ".join(GCP_ENTRY_POINTS[unit])
    return (f"# Generated by functions/build.py: Cloud Functions loads entry points from main.py.\n"
            f"from functions.{unit}.gcp import {names}  # noqa: F401\n\n"
            f"__all__ = {list(GCP_ENTRY_POINTS[unit])!r}\n")


def _requirements(pyproject: Path, cloud: str) -> str:
    """The runtime dependencies: wardgate's own plus the cloud's SDKs and function runtime, with the
    version bounds pyproject declares (one source of truth)."""
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"{pyproject}: cannot read the project's dependencies: {exc}") from None
    extras = project.get("optional-dependencies", {})
    wanted = _CLOUD_PACKAGES[cloud]
    chosen = list(project.get("dependencies", []))
    for requirement in [*extras.get("cloud", []), *extras.get("functions", [])]:
        name = re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0].lower()
        if name.startswith(wanted):
            chosen.append(requirement)
    return "".join(f"{line}\n" for line in sorted(set(chosen), key=str.lower))


def _write_unit(target: Path, files: dict[str, Path | str], wardgate_src: Path, requirements: str) -> Path:
    files = dict(files)
    files["requirements.txt"] = requirements
    for path in sorted(wardgate_src.rglob("*")):
        relative = path.relative_to(wardgate_src)
        if path.is_file() and not (_SKIPPED_DIRS & set(relative.parts)) and path.suffix not in _SKIPPED_SUFFIXES:
            files[f"wardgate/{relative.as_posix()}"] = path
    for relative in sorted(files):
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        content = files[relative]
        data = content.read_bytes() if isinstance(content, Path) else content.encode()
        destination.write_bytes(data)
    _normalize(target)
    return target


def _normalize(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    os.chmod(root, 0o755)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


def tree_digest(root: Path) -> str:
    """SHA-256 over the sorted relative paths and contents of a built unit (what changes the archive)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def zip_unit(root: Path, archive: Path) -> Path:
    """A reproducible zip of a built unit: sorted entries, fixed timestamps and permissions."""
    root = Path(root)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            bundle.writestr(info, path.read_bytes())
    return archive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Package wardgate's serverless functions for one cloud.")
    parser.add_argument("--cloud", required=True, choices=CLOUDS)
    parser.add_argument("--out", required=True, type=Path, help="output directory (DIR/<cloud>/<unit>/)")
    parser.add_argument("--functions-dir", type=Path, default=None,
                        help="function sources (default: the functions/ directory beside this file)")
    parser.add_argument("--vendor-dir", type=Path, default=None,
                        help="AWS only: dependencies installed beforehand with pip install --target")
    args = parser.parse_args(argv)
    try:
        built = build(args.cloud, args.out, functions_dir=args.functions_dir, vendor_dir=args.vendor_dir)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    for unit, path in sorted(built.items()):
        print(f"{unit}\t{path}\t{tree_digest(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
