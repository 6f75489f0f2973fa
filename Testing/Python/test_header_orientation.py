"""A volume whose header states no orientation is read as LPS identity, and says so.

Why: ITK silently takes such axes as LPS (NRRD without `space directions`, MetaImage without
`TransformMatrix`, NIfTI with qform and sform codes 0), so left and right may be swapped without
a word. `coralbay info` prints a warning, the engine logs it (commands forward it to stderr or
the JSON-lines stream), and a header that does state it stays quiet.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import SimpleITK as sitk

from coralbay.io.volumes import read_volume

BODY = np.full((8, 8, 8), 40, np.int16)
BODY[0] = -1000


def _nrrd(path, space_directions: bool):
    geometry = ("space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
                "space origin: (0,0,0)\n" if space_directions else "spacings: 1 1 1\n")
    path.write_bytes(f"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 8\n{geometry}encoding: raw\n"
                     "endian: little\n\n".encode() + BODY.astype("<i2").tobytes())
    return path


def test_nrrd_without_space_directions_warns_in_info_and_log(tmp_path, cli, caplog):
    bare = _nrrd(tmp_path / "bare.nrrd", space_directions=False)
    done = cli("info", bare)
    assert done.returncode == 0, done.stderr
    assert "states no orientation" in done.stdout and "warning:" in done.stdout
    as_json = json.loads(cli("info", bare, "--json").stdout)
    assert "LPS" in as_json["orientation_warning"]
    with caplog.at_level(logging.WARNING, logger="coralbay.io"):
        image = read_volume(bare)
    assert any("states no orientation" in r.getMessage() for r in caplog.records)
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_stated_orientations_stay_quiet(tmp_path, cli, caplog):
    stated = _nrrd(tmp_path / "stated.nrrd", space_directions=True)
    image = sitk.GetImageFromArray(BODY)
    sitk.WriteImage(image, str(tmp_path / "written.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "written.mha"))
    for path in (stated, tmp_path / "written.nii.gz", tmp_path / "written.mha"):
        done = cli("info", path, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["orientation_warning"] is None, path
    with caplog.at_level(logging.WARNING, logger="coralbay.io"):
        read_volume(stated)
    assert not [r for r in caplog.records if "orientation" in r.getMessage()]


def test_metaimage_without_transform_matrix_warns(tmp_path, cli):
    raw = tmp_path / "bare.raw"
    raw.write_bytes(BODY.astype("<i2").tobytes())
    header = tmp_path / "bare.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementSpacing = 1 1 1\n"
                      "ElementType = MET_SHORT\nElementByteOrderMSB = False\nElementDataFile = bare.raw\n")
    done = cli("info", header, "--json")
    assert done.returncode == 0, done.stderr
    assert "states no orientation" in json.loads(done.stdout)["orientation_warning"]
