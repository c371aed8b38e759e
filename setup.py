"""Package discovery for geodino's four wings (all metadata is in pyproject.toml).

One import root, four folders: ``geodino/`` is geodino, ``training/`` is geodino.training, ``heads/`` is
geodino.heads, ``workflows/`` is geodino.workflows. setuptools' ``find`` names packages after their folders, so it
cannot find ``geodino.training.losses`` in ``training/losses`` by itself; this finds each wing's subpackages (any
folder with an ``__init__.py``) and maps them under the wing's name, so a new subpackage needs no edit here.
"""

from setuptools import find_packages, setup

WINGS = {
    "geodino": "geodino",
    "geodino.training": "training",
    "geodino.heads": "heads",
    "geodino.workflows": "workflows",
}

packages = [f"{name}.{sub}" if sub else name for name, folder in WINGS.items() for sub in ["", *find_packages(folder)]]
setup(packages=packages, package_dir=WINGS)
