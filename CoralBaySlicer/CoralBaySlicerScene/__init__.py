"""Helpers of the CoralBaySlicer module that need Slicer (the scene, module logics, Qt), one file per
workflow family; tested on real slicer-core (Testing/Python/test_slicer_*.py).

    scene_guard.py          no node left behind: remove what a step added if it fails (or always)
    nodes_to_files.py       scene nodes written for the engine (volumes, segmentations as label maps,
                            ROI / points as LPS, DICOM files), with the input checks
    files_to_nodes.py       engine files read into the scene (label maps as named segments, distance
                            maps, tables)
    engine_jobs.py          the engine runner, its cache folders and the one background job at a time
    install.py              dependencies: what is missing, installing PyTorch and pip packages
    tasks.py                the background workflows: segment, classify, compare, export, phantom, teach
    interactive.py          the interactive session's logic (requests, answers applied to the scene)
    interactive_segments.py the interactive preview / accepted / restored segments
    interactive_section.py  the panel's Interactive section: its Qt wiring and keyboard shortcuts
    model_section.py        the panel's model list, structures and "Propose with" choice
    selftest.py             the in-Slicer self-test (phantom, segment, compare, classify, export...)

The Slicer-free parts (engine process, command lines, results, protocol events) are in
`CoralBaySlicerLib`; the module file `CoralBaySlicer.py` keeps Slicer's four standard classes.
"""
