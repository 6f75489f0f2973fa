"""Slicer-free helpers of the CoralBaySlicer module: engine process, command lines, results, dependencies.

Nothing here imports `slicer`, `qt`, `ctk` or VTK, so all of it runs (and is tested) in plain Python.
The parts that need Slicer are in `CoralBaySlicerScene`; the module file `CoralBaySlicer.py` keeps Slicer's
four standard classes.
"""
