"""Build glue: maps the `embps` package onto services/ and compiles the native store with cffi."""

from setuptools import find_packages, setup

setup(
    package_dir={"embps": "services"},
    packages=["embps"] + [f"embps.{name}" for name in find_packages("services")],
    cffi_modules=["native/build_store.py:ffibuilder"],
)
