"""Night Core: a secure, multi-tenant WebAssembly runtime (see README.md)."""

__version__ = "0.1.0"  # kept equal to pyproject.toml's version (tests/unit/test_versions.py)
