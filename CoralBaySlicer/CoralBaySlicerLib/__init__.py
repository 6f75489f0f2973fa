"""Slicer-free helpers of the CoralBaySlicer module: engine process, command lines, results, dependencies.

Nothing here imports `slicer`, `qt`, `ctk` or VTK, so all of it runs (and is tested) in plain Python.
The module file `CoralBaySlicer.py` keeps only the glue between these helpers and the Slicer scene.
"""
