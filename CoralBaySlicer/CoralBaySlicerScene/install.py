"""Dependencies of the engine in Slicer's Python: what is missing, and installing it safely.

Why a dry run first: pip may want to replace packages Slicer ships (SimpleITK, numpy...), which can
break Slicer itself; the plan is checked (`dependencies.check_plan`) before anything is installed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import slicer
from CoralBaySlicerLib import dependencies


class InstallLogic:
    """Part of the module's Logic (needs `engineExecutable`, see engine_jobs.EngineJobs)."""

    def missingDependencies(self):
        missing = ["PyTorch"] if dependencies.torch_missing() else []
        missing += [r.pip for r in dependencies.missing_requirements()]
        missing += [f"{m} (part of Slicer)" for m in dependencies.missing_from_slicer()]
        return missing

    def installDependencies(self) -> str:
        """Install PyTorch (PyTorch extension) and the pinned packages; return a GPU sentence."""
        broken = dependencies.missing_from_slicer()
        if broken:
            raise dependencies.DependencyError(
                f"This Slicer lacks its own {', '.join(broken)}; reinstall Slicer.")
        if dependencies.torch_missing():
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise dependencies.DependencyError(
                    "CoralBay needs the PyTorch extension: install it from the Extensions Manager, "
                    "restart Slicer and try again.") from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=dependencies.TORCH_REQUIREMENT) is None:
                raise dependencies.DependencyError("PyTorch could not be installed.")
        missing = dependencies.missing_requirements()
        if missing:
            self._pipInstall(missing)
        import torch

        return dependencies.gpu_summary(torch)

    def _pipInstall(self, requirements) -> None:
        """Dry-run pip first and refuse if it would touch Slicer's own packages, then install."""
        with tempfile.TemporaryDirectory(prefix="CoralBay-pip-") as folder:
            constraintsFile = os.path.join(folder, "constraints.txt")
            reportFile = os.path.join(folder, "plan.json")
            with open(constraintsFile, "w", encoding="utf-8") as f:
                f.write(dependencies.constraints())
            installArgs = dependencies.pip_install_args(requirements, constraintsFile)
            plan = subprocess.run(
                [self.engineExecutable, "-m", "pip", *dependencies.pip_dry_run_args(installArgs, reportFile)],
                capture_output=True, text=True, env=slicer.util.startupEnvironment())
            if plan.returncode != 0:
                lines = (plan.stderr or plan.stdout).strip().splitlines()
                raise dependencies.DependencyError(
                    "pip cannot install CoralBay's packages: " + (lines[-1] if lines else f"exit code {plan.returncode}"))
            with open(reportFile, encoding="utf-8") as f:
                dependencies.check_plan(f.read())
            slicer.util.pip_install(installArgs)  # Slicer adds `install` itself
