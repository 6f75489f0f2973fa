"""Puts the demo bundles (Resources/Models) into the wheel as package data of `coralbay`.

Why a build step: Resources/ sits at the repository root, where the Slicer extension needs it
(beside the module once installed), outside the `coralbay` package that pyproject.toml
installs. A wheel copies them to `coralbay/Resources/Models`, the first place
`coralbay.bundle.catalog.resources_dir` looks, so `pip install .` then `coralbay demo` works.
Everything else is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MODELS = ROOT / "Resources" / "Models"


class BuildWithDemoBundles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads Resources/ of the checkout
        for source in sorted(MODELS.rglob("*")):
            if source.is_file():
                target = Path(self.build_lib) / "coralbay" / "Resources" / "Models" / source.relative_to(MODELS)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildWithDemoBundles})
