"""functions/build.py: what each cloud's package holds, determinism, and clear errors."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import pytest

from infra_harness import REPO_ROOT
from functions.build import BuildError, build, tree_digest, zip_unit


def _files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_aws_units_hold_their_handler_entry_point_wardgate_and_requirements(fake_functions, tmp_path):
    built = build("aws", tmp_path, functions_dir=fake_functions)
    assert set(built) == {"approval", "evidence_export", "key_rotation"}
    files = _files(built["approval"])
    assert {"functions/__init__.py", "functions/approval/__init__.py", "functions/approval/handler.py",
            "functions/approval/aws.py", "requirements.txt", "wardgate/__init__.py", "wardgate/core/audit.py"} <= files
    # Only what this unit needs: no other unit, no other cloud's entry point, no dev tools or bytecode.
    assert not any(f.startswith(("functions/evidence_export", "functions/key_rotation")) for f in files)
    assert "functions/approval/gcp.py" not in files
    assert not any("devtools" in f or "__pycache__" in f or f.endswith(".pyc") for f in files)
    requirements = (built["approval"] / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("boto3") for r in requirements) and any(r.startswith("aws-lambda-powertools") for r in requirements)
    assert any(r.startswith("PyJWT") for r in requirements)
    assert not any(r.startswith(("google-", "azure-")) for r in requirements)


def test_gcp_units_get_a_main_that_reexports_the_entry_points(fake_functions, tmp_path):
    built = build("gcp", tmp_path, functions_dir=fake_functions)
    main = (built["approval"] / "main.py").read_text()
    assert "from functions.approval.gcp import notifier, webhook" in main
    result = subprocess.run([sys.executable, "-c", "import main; print(main.notifier.__name__, main.webhook.__name__)"],
                            cwd=built["approval"], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["notifier", "webhook"], result.stderr
    assert "from functions.evidence_export.gcp import export" in (built["evidence_export"] / "main.py").read_text()
    assert "from functions.key_rotation.gcp import rotate" in (built["key_rotation"] / "main.py").read_text()
    requirements = (built["approval"] / "requirements.txt").read_text()
    assert "functions-framework" in requirements and "google-cloud-pubsub" in requirements and "boto3" not in requirements


def test_azure_is_one_function_app(fake_functions, tmp_path):
    built = build("azure", tmp_path, functions_dir=fake_functions)
    assert set(built) == {"function_app"}
    root = built["function_app"]
    files = _files(root)
    assert {"function_app.py", "host.json", "requirements.txt", "functions/azure_app.py",
            "functions/approval/handler.py", "functions/evidence_export/handler.py",
            "functions/key_rotation/handler.py", "functions/key_rotation/azure.py"} <= files
    assert not any(f.startswith("functions/") and f.endswith(("/aws.py", "/gcp.py")) for f in files)
    assert "from functions.azure_app import app" in (root / "function_app.py").read_text()
    assert "azure-functions" in (root / "requirements.txt").read_text()


def test_the_azure_rotation_timer_module_is_required(fake_functions, tmp_path):
    partial = tmp_path / "src" / "functions"
    shutil.copytree(fake_functions, partial)
    (partial / "key_rotation" / "azure.py").unlink()
    with pytest.raises(BuildError, match=r"key_rotation/azure\.py is missing: the AZURE entry point of key_rotation"):
        build("azure", tmp_path / "out", functions_dir=partial)
    build("aws", tmp_path / "out", functions_dir=partial)  # other clouds do not package it


def test_an_unchanged_build_gives_an_unchanged_archive(fake_functions, tmp_path):
    first = build("aws", tmp_path / "one", functions_dir=fake_functions)["approval"]
    second = build("aws", tmp_path / "two", functions_dir=fake_functions)["approval"]
    assert tree_digest(first) == tree_digest(second)
    assert {p.stat().st_mtime for p in first.rglob("*")} == {315532800}
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    assert digest(zip_unit(first, tmp_path / "a.zip")) == digest(zip_unit(second, tmp_path / "b.zip"))


def test_a_changed_source_changes_the_package(fake_functions, tmp_path):
    changed = tmp_path / "src" / "functions"
    shutil.copytree(fake_functions, changed)
    before = tree_digest(build("aws", tmp_path / "before", functions_dir=changed)["approval"])
    (changed / "approval" / "handler.py").write_text("def handle(request):\n    return None\n")
    assert tree_digest(build("aws", tmp_path / "after", functions_dir=changed)["approval"]) != before


def test_a_missing_source_fails_naming_the_file(fake_functions, tmp_path):
    partial = tmp_path / "src" / "functions"
    shutil.copytree(fake_functions, partial)
    (partial / "evidence_export" / "aws.py").unlink()
    with pytest.raises(BuildError, match=r"evidence_export/aws\.py is missing: the AWS entry point of evidence_export"):
        build("aws", tmp_path / "out", functions_dir=partial)
    with pytest.raises(BuildError, match="unknown cloud 'oracle'"):
        build("oracle", tmp_path / "out", functions_dir=partial)


def test_cli_builds_and_reports_missing_sources(fake_functions, tmp_path):
    ok = subprocess.run([sys.executable, str(REPO_ROOT / "functions" / "build.py"), "--cloud", "gcp", "--out",
                         str(tmp_path), "--functions-dir", str(fake_functions)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    units = {line.split("\t")[0] for line in ok.stdout.splitlines()}
    assert units == {"approval", "evidence_export", "key_rotation"}
    missing = subprocess.run([sys.executable, str(REPO_ROOT / "functions" / "build.py"), "--cloud", "aws", "--out",
                              str(tmp_path), "--functions-dir", str(tmp_path / "nothing")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "approval/handler.py is missing" in missing.stderr


def test_vendored_dependencies_are_copied_into_lambda_units_only(fake_functions, tmp_path):
    vendor = tmp_path / "vendor"
    (vendor / "jwt").mkdir(parents=True)
    (vendor / "jwt" / "__init__.py").write_text("# vendored\n")
    built = build("aws", tmp_path / "out", functions_dir=fake_functions, vendor_dir=vendor)
    for unit in built.values():
        assert (unit / "jwt" / "__init__.py").read_text() == "# vendored\n"
    with pytest.raises(BuildError, match="vendor_dir is for Lambda only"):
        build("gcp", tmp_path / "out", functions_dir=fake_functions, vendor_dir=vendor)
    with pytest.raises(BuildError, match="does not exist"):
        build("aws", tmp_path / "out", functions_dir=fake_functions, vendor_dir=tmp_path / "nope")
