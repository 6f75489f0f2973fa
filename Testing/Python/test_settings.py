"""Typed bundle settings and the fixed vocabularies.

The manifest's `preprocessing` and `inference` sections become frozen dataclasses with their
defaults filled in; one WindowSettings object carries a command's overrides to the
sliding-window functions; the str-valued enums equal their plain strings (manifests, JSON
results and the Slicer module keep using the strings).
"""

from __future__ import annotations

import json

import pytest

from coralbay.bundle.catalog import resolve_model
from coralbay.bundle.manifest import InferenceSettings, PreprocessingSettings, read_manifest
from coralbay.grid.windows import WindowSettings
from coralbay.vocabulary import BlendMode, ExportFormat, JobState, RestoreMethod, Task


def test_demo_manifest_sections_are_typed_with_defaults():
    manifest = read_manifest(resolve_model("demo-phantom-seg"))
    pre, infer = manifest.preprocessing, manifest.inference
    assert isinstance(pre, PreprocessingSettings) and isinstance(infer, InferenceSettings)
    raw_pre, raw_infer = manifest.data["preprocessing"], manifest.data["inference"]
    assert pre.spacing_mm == tuple(raw_pre["spacing_mm"])
    assert pre.intensity_window_hu == tuple(raw_pre["intensity_window_hu"])
    assert infer.window_size == tuple(raw_infer["window_size"])
    # absent keys take the documented defaults
    assert pre.foreground_margin_mm == raw_pre.get("foreground_margin_mm", 10.0)
    assert infer.sigma_scale == raw_infer.get("sigma_scale", 0.125)
    # the point region defaults to one window at the bundle's spacing
    expected = [w * s for w, s in zip(infer.window_size, pre.spacing_mm)]
    assert list(infer.point_region_mm) == pytest.approx(raw_infer.get("point_region_mm", expected))
    assert manifest.task is Task.SEGMENTATION and manifest.task == "segmentation"
    # the JSON form round-trips
    assert PreprocessingSettings.parse(json.loads(json.dumps(pre.to_dict()))) == pre


def test_window_settings_carry_the_overrides():
    infer = InferenceSettings.parse({"window_size": [64, 64, 96], "overlap": 0.5, "window_batch_size": 4})
    plain = infer.windows()
    assert (plain.size, plain.overlap, plain.batch_size, plain.blend) == ((64, 64, 96), 0.5, 4, BlendMode.GAUSSIAN)
    changed = infer.windows(overlap=0.25, batch_size=1)
    assert (changed.overlap, changed.batch_size) == (0.25, 1)
    assert changed.with_(skip_empty=False, overlap=None).skip_empty is False
    assert changed.with_(overlap=None).overlap == 0.25  # None means "no override"
    with pytest.raises(ValueError):
        WindowSettings((64, 64, 64), overlap=1.0)
    with pytest.raises(ValueError):
        InferenceSettings.parse({"window_size": [64, 64, 64], "blend": "median"})


def test_enums_equal_their_strings():
    assert JobState.FAILED == "failed" and JobState("succeeded") is JobState.SUCCEEDED
    assert f"{Task.CLASSIFICATION}" == "classification"
    assert json.dumps({"format": ExportFormat.SEG_NRRD}) == '{"format": "seg.nrrd"}'
    assert RestoreMethod.values() == ("linear", "nearest")
    with pytest.raises(ValueError):
        ExportFormat("png")
