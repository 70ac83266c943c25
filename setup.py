"""Builds wardgate's optional compiled accelerators from their ``.pyx``:

- ``wardgate.protocols.postgres._rowmask_fast``: the DataRow masker;
- ``wardgate.core._eventchain_fast``: the audit event chain, formatting and hashing event lines
  (links OpenSSL's ``libcrypto``; needs its headers, Debian ``libssl-dev``);
- ``wardgate.core._sqltemplate_fast``: the SQL classifier's template key (a statement around its
  integer literals);
- ``wardgate.protocols.postgres._relay_fast``: the head of the backend relay loop (unmasked results'
  messages in one pass);
- ``wardgate.core._detect_fast``: the masking detectors' prefilter (which detectors can match a text).

Everything else about the package is in ``pyproject.toml``. Each extension is optional: without
Cython, a C compiler or a library's headers the package installs without it, and the Python
reference implementation is used (with a warning logged once). The SHA-256 of each ``.pyx`` is
compiled into its module; ``wardgate.core.compiled`` uses a module only if it matches the ``.pyx``
next to it, so a stale build is never used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
# (module, source, macro carrying the source's SHA-256, libraries to link)
ACCELERATORS = [
    ("wardgate.protocols.postgres._rowmask_fast", Path("gateway_container/wardgate/protocols/postgres/_rowmask_fast.pyx"),
     "WARDGATE_ROWMASK_SOURCE_SHA256", []),
    ("wardgate.core._eventchain_fast", Path("gateway_container/wardgate/core/_eventchain_fast.pyx"),
     "WARDGATE_EVENTCHAIN_SOURCE_SHA256", ["crypto"]),
    ("wardgate.core._sqltemplate_fast", Path("gateway_container/wardgate/core/_sqltemplate_fast.pyx"),
     "WARDGATE_SQLTEMPLATE_SOURCE_SHA256", []),
    ("wardgate.protocols.postgres._relay_fast", Path("gateway_container/wardgate/protocols/postgres/_relay_fast.pyx"),
     "WARDGATE_RELAY_SOURCE_SHA256", []),
    ("wardgate.core._detect_fast", Path("gateway_container/wardgate/core/_detect_fast.pyx"),
     "WARDGATE_DETECT_SOURCE_SHA256", []),
]


def extensions() -> list:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("wardgate: Cython is not installed; building without the compiled accelerators")
        return []
    built = []
    for module, pyx, macro, libraries in ACCELERATORS:
        digest = hashlib.sha256((HERE / pyx).read_bytes()).hexdigest()
        built.append(Extension(
            module, [pyx.as_posix()], define_macros=[(macro, f'"{digest}"')], libraries=libraries))
    # The generated C goes under build/, not into the source tree.
    compiled = cythonize(built, build_dir="build/cython", quiet=True, compiler_directives={"language_level": "3"})
    for extension in compiled:
        # cythonize() returns new Extension objects without ``optional``: set it again, or a machine
        # without a C compiler or Python's headers fails the whole install instead of falling back.
        extension.optional = True
    return compiled


setup(
    ext_modules=extensions(),
    # Each compiled module is compared with its source at import: install the sources too.
    package_data={"wardgate.protocols.postgres": ["_rowmask_fast.pyx", "_relay_fast.pyx"], "wardgate.core": ["_eventchain_fast.pyx", "_sqltemplate_fast.pyx", "_detect_fast.pyx"]},
)
