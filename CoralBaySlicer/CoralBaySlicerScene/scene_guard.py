"""No node left behind: steps that add temporary nodes (or fail halfway) leave the scene as it was.

Why one home: writing for the engine, reading its outputs and the interactive previews all add
nodes that Slicer extends with display, storage and colour nodes of its own; removing "what was
added since" is the only rule that catches those too.
"""

from __future__ import annotations

import contextlib

import slicer


def nodeIDs() -> set:
    scene = slicer.mrmlScene
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def removeNodesAddedSince(before: set, keep=None) -> None:
    """Remove every node added to the scene since `before` (node IDs), except `keep` and its display
    and storage nodes. A node already taken away with another is skipped: Slicer's Data module
    removes a node's display and storage nodes with it."""
    scene = slicer.mrmlScene
    kept = set()
    if keep is not None:
        kept = {keep.GetID()} | {keep.GetNthDisplayNodeID(i) for i in range(keep.GetNumberOfDisplayNodes())}
        if keep.GetStorageNodeID():
            kept.add(keep.GetStorageNodeID())
    added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    for node in [n for n in added if n is not None and n.GetID() not in before and n.GetID() not in kept]:
        if scene.IsNodePresent(node):
            scene.RemoveNode(node)


@contextlib.contextmanager
def sceneUnchanged():
    """Remove, on leaving, every node added meanwhile (temporary nodes and those Slicer adds with them)."""
    before = nodeIDs()
    try:
        yield
    finally:
        removeNodesAddedSince(before)


def keepSceneOnFailure(readOutputs):
    """Wrap `readOutputs` so that nodes it added are removed again if it fails halfway."""
    def read(run):
        before = nodeIDs()
        try:
            return readOutputs(run)
        except Exception:
            removeNodesAddedSince(before)
            raise
    return read
