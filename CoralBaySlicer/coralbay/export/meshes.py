"""Per-structure surface meshes (STL or OBJ) in physical LPS millimetres, built with VTK.

Method: each structure is cropped to its bounding box with one voxel of background around it (so
the surface is closed even where it touches the image border), contoured with discrete flying
edges (the surface passes half-way between labelled and unlabelled voxel centres), mapped from
voxel indices to LPS with the image's full index-to-physical matrix (spacing, direction, origin),
then smoothed with a windowed-sinc filter as Slicer does for its closed-surface representation.
Coordinates are LPS, like Slicer's own STL/OBJ export; the files say so ("SPACE=LPS" in the STL
header and in an OBJ comment), which Slicer reads when loading them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from coralbay.grid.lps import index_to_lps
from coralbay.io.labels import LabelTable

MESH_FORMATS = ("stl", "obj")
SMOOTHING_PASSBAND = 0.01  # Slicer's default smoothing factor 0.5 -> pass band 10^(-4 x 0.5)
SMOOTHING_ITERATIONS = 20


def safe_file_name(name: str) -> str:
    """A structure name usable as a file name on every platform."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "structure"


def structure_mesh(mask_kji: np.ndarray, matrix: np.ndarray, smooth: bool = True):
    """Closed triangle mesh (vtkPolyData, LPS) of a boolean mask indexed (k, j, i)."""
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersCore import (vtkPolyDataNormals, vtkReverseSense, vtkTriangleFilter,
                                           vtkWindowedSincPolyDataFilter)
    from vtkmodules.vtkFiltersGeneral import vtkDiscreteFlyingEdges3D, vtkTransformFilter

    padded = np.pad(mask_kji.astype(np.uint8), 1)
    data = vtkImageData()
    data.SetDimensions(padded.shape[2], padded.shape[1], padded.shape[0])
    data.GetPointData().SetScalars(numpy_to_vtk(padded.ravel(), deep=True))
    contour = vtkDiscreteFlyingEdges3D()
    contour.SetInputData(data)
    contour.SetValue(0, 1)
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()

    vtk_matrix = vtkMatrix4x4()
    shifted = matrix.copy()
    shifted[:3, 3] -= matrix[:3, :3] @ np.ones(3)  # the padding moved every index by one
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, float(shifted[r, c]))
    transform = vtkTransform()
    transform.SetMatrix(vtk_matrix)
    to_lps = vtkTransformFilter()
    to_lps.SetTransform(transform)
    to_lps.SetInputConnection(contour.GetOutputPort())
    last = to_lps
    if np.linalg.det(matrix[:3, :3]) < 0:  # a mirroring grid turns triangles inside out
        reverse = vtkReverseSense()
        reverse.ReverseCellsOn()
        reverse.SetInputConnection(last.GetOutputPort())
        last = reverse
    if smooth:
        smoother = vtkWindowedSincPolyDataFilter()
        smoother.SetInputConnection(last.GetOutputPort())
        smoother.SetNumberOfIterations(SMOOTHING_ITERATIONS)
        smoother.SetPassBand(SMOOTHING_PASSBAND)
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        last = smoother
    triangles = vtkTriangleFilter()
    triangles.SetInputConnection(last.GetOutputPort())
    normals = vtkPolyDataNormals()
    normals.SetInputConnection(triangles.GetOutputPort())
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOff()
    normals.Update()
    return normals.GetOutput()


def write_mesh(polydata, path: Path, fmt: str) -> None:
    from vtkmodules.vtkIOGeometry import vtkOBJWriter, vtkSTLWriter

    if fmt == "stl":
        writer = vtkSTLWriter()
        writer.SetFileTypeToBinary()
        writer.SetHeader("SPACE=LPS CoralBaySlicer mesh, millimetres")
    else:
        writer = vtkOBJWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(polydata)
    if not writer.Write():
        raise OSError(f"VTK could not write {path}")
    if fmt == "obj":
        text = path.read_text(encoding="utf-8")
        path.write_text("# SPACE=LPS (CoralBaySlicer mesh, millimetres)\n" + text, encoding="utf-8")


def write_structure_meshes(image: sitk.Image, table: LabelTable, folder: Path, fmt: str = "stl") -> list[Path]:
    """One mesh file per label present in `image`, named after the structure, into `folder`."""
    from scipy import ndimage

    labels = sitk.GetArrayViewFromImage(image)
    written: list[Path] = []
    used: set[str] = set()
    for index, box in enumerate(ndimage.find_objects(np.asarray(labels))):
        if box is None:
            continue
        value = index + 1
        name = safe_file_name(table.name_of(value))
        if name.lower() in used:
            name = f"{name}_{value}"
        used.add(name.lower())
        offset = (box[2].start, box[1].start, box[0].start)
        mesh = structure_mesh(labels[box] == value, index_to_lps(image, offset))
        path = folder / f"{name}.{fmt}"
        write_mesh(mesh, path, fmt)
        written.append(path)
    return written
