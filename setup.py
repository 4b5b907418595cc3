"""Build glue: compiles the native store with cffi (the package itself is found by pyproject.toml)."""

from setuptools import setup

setup(cffi_modules=["native/build_store.py:ffibuilder"])
