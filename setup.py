"""Builds the compiled DataRow masker (``wardgate.protocols.postgres._rowmask_fast``) from its ``.pyx``.

Everything else about the package is in ``pyproject.toml``. The extension is optional: without Cython
or a C compiler the package installs without it and ``rowmask`` falls back to its Python walker (and
logs a warning once). The SHA-256 of the ``.pyx`` is compiled into the module; ``rowmask`` uses the
module only if it matches the ``.pyx`` next to it, so a stale build is never used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
PYX = Path("gateway_container/wardgate/protocols/postgres/_rowmask_fast.pyx")


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("wardgate: Cython is not installed; building without the compiled DataRow masker")
        return []
    digest = hashlib.sha256((HERE / PYX).read_bytes()).hexdigest()
    extension = Extension(
        "wardgate.protocols.postgres._rowmask_fast", [PYX.as_posix()],
        define_macros=[("WARDGATE_ROWMASK_SOURCE_SHA256", f'"{digest}"')],
        optional=True,  # a failed compile leaves the Python walker, it does not fail the install
    )
    # The generated C goes under build/, not into the source tree.
    return cythonize([extension], build_dir="build/cython", quiet=True,
                     compiler_directives={"language_level": "3"})


setup(
    ext_modules=extensions(),
    # rowmask compares the compiled module with its source: install the source too.
    package_data={"wardgate.protocols.postgres": ["_rowmask_fast.pyx"]},
)
