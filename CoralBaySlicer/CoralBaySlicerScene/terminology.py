"""Slicer's terminology for structure names that the model's label table does not code.

Why: a bundle's label table may name a structure without a code, and the user may type a name
the model does not know; Slicer's Terminologies module holds the standard codes of every context
loaded in the application (Slicer's general anatomy and DICOM lists, and those extensions load,
such as TotalSegmentator's). A name is looked up by the entries' `3dSlicerLabel` with the
logic's own search (`vtkSlicerTerminologiesModuleLogic::FindTypeInTerminologyBy3dSlicerLabel`),
and the entry is set on the segment as the terminology tag string Slicer's Segment Editor writes.
"""

from __future__ import annotations

from typing import Optional

import vtk

import slicer
from CoralBaySlicerLib import segments


def loadedTerminologies() -> list:
    """Names of the terminology contexts loaded in Slicer, in the logic's order."""
    names = vtk.vtkStringArray()
    slicer.modules.terminologies.logic().GetLoadedTerminologyNames(names)
    return [names.GetValue(i) for i in range(names.GetNumberOfValues())]


def findTerminology(name: str) -> Optional[tuple]:
    """(entry string, recommended colour in 0..1) of the first loaded terminology entry whose
    `3dSlicerLabel` is one of the name's forms (`segments.slicer_label_candidates`), or None."""
    logic = slicer.modules.terminologies.logic()
    contexts = loadedTerminologies()
    for label in segments.slicer_label_candidates(name):
        for context in contexts:
            entry = slicer.vtkSlicerTerminologyEntry()
            if logic.FindTypeInTerminologyBy3dSlicerLabel(context, label, entry):
                modifier = entry.GetTypeModifierObject()
                coded = modifier if modifier is not None and modifier.GetCodeValue() else entry.GetTypeObject()
                color = tuple(c / 255.0 for c in coded.GetRecommendedDisplayRGBValue())
                return logic.SerializeTerminologyEntry(entry), color
    return None


def terminologyEntry(name: str) -> Optional[str]:
    """The entry string of Slicer's terminology for `name`, or None (see `findTerminology`)."""
    found = findTerminology(name)
    return found[0] if found else None


def structureAppearance(name: str, known, index: int) -> tuple:
    """Colour (0..1) and terminology entry of a structure: the model's label of that name; where the
    label has no code, or the model does not know the name, Slicer's terminology (its recommended
    colour only for a name the model does not know); else a distinct colour and no code."""
    color, entry = segments.structure_appearance(name, known, index)
    if entry:
        return color, entry
    found = findTerminology(name)
    if found is None:
        return color, None
    entry, recommended = found
    return (color if segments.find_label(known, name) is not None else recommended), entry
