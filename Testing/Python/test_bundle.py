"""Model bundles: round trip, checksums, manifest validation, backbone files, safe loading, catalog."""

from __future__ import annotations

import json
import pickle
import shutil

import jsonschema
import pytest
import torch

from conftest import run_cli_many
from coralbay.bundle.loader import load_bundle
from coralbay.bundle.manifest import manifest_schema, read_manifest, validate_manifest
from coralbay.bundle.schema_check import first_error
from coralbay.bundle.weights import load_checkpoint, parse_hub_id
from coralbay.errors import BundleError


def copy_bundle(src, tmp_path, name="b"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_round_trip_gives_the_same_network(tiny_seg_bundle, tmp_path):
    from coralbay.bundle.loader import save_bundle

    first = load_bundle(tiny_seg_bundle)
    fields = {k: v for k, v in first.manifest.data.items() if k not in ("schema_version", "weights")}
    save_bundle(tmp_path / "again", fields, first.network)
    second = load_bundle(tmp_path / "again")
    assert second.manifest.data["labels"] == first.manifest.data["labels"]
    for (k1, v1), (k2, v2) in zip(first.network.state_dict().items(), second.network.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_separate_backbone_file_loads(tiny_cls_bundle):
    bundle = load_bundle(tiny_cls_bundle)
    assert {w["role"] for w in bundle.manifest.data["weights"]} == {"model", "backbone"}
    assert bundle.notes[0].startswith("Loaded ") and "backbone.safetensors" in bundle.notes[0]
    assert not any(p.is_meta for p in bundle.network.parameters())


def test_checksum_mismatch_is_detected(tiny_seg_bundle, tmp_path):
    bundle = copy_bundle(tiny_seg_bundle, tmp_path)
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its checksum"):
        load_bundle(bundle)


@pytest.mark.parametrize("tamper,message", [
    (lambda m: m.update(task="detection"), "task must be one of"),
    (lambda m: m["weights"][0].update(file="../../etc/passwd.safetensors"), "invalid value"),
    (lambda m: m["weights"][0].pop("sha256"), "lacks the required field 'sha256'"),
    (lambda m: m["preprocessing"].update(intensity_window_hu=[300, 100]), "intensity window is empty"),
    (lambda m: m["inference"].update(window_size=[96, 96, 80]), "multiple of 32"),
    (lambda m: m["labels"].append(dict(m["labels"][0])), "same label value twice"),
    (lambda m: m.update(unexpected_field=1), "unknown field"),
])
def test_tampered_manifest_is_rejected(tiny_seg_bundle, tmp_path, tamper, message):
    bundle = copy_bundle(tiny_seg_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    tamper(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_schema_checker_agrees_with_jsonschema(tiny_seg_bundle):
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    good = json.loads((tiny_seg_bundle / "manifest.json").read_text())
    bad_cases = [dict(good, version="one"), dict(good, labels=[]), dict(good, schema_version=2),
                 {**good, "inference": {**good["inference"], "overlap": 1.0}},
                 {**good, "architecture": {"feature_size": 2}}]
    assert first_error(good, schema) is None
    jsonschema.validate(good, schema)
    for bad in bad_cases:
        assert first_error(bad, schema) is not None
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_weights_that_do_not_fit_the_architecture_are_named(tiny_seg_bundle, tmp_path):
    bundle = copy_bundle(tiny_seg_bundle, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["architecture"]["feature_size"] = 12
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"tensor .* has shape .* but the declared architecture needs"):
        load_bundle(bundle)


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED_MARKER', 'w').write('owned')",))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {"swinViT.x": _RunsCode()}}))
    with pytest.raises(BundleError, match="cannot be loaded safely"):
        load_checkpoint(evil)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_refused_pickle_message_never_advises_switching_the_safety_off(tmp_path):
    """The refusal says what the file holds and how to convert a trusted one, never torch's
    advice to re-run torch.load with weights_only=False."""
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": {"swinViT.x": _RunsCode()}}))
    with pytest.raises(BundleError) as info:
        load_checkpoint(evil)
    message = str(info.value)
    assert "weights_only" not in message and "False" not in message
    assert "more than tensors" in message or "besides tensors" in message
    assert "safetensors" in message
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(BundleError) as info:
        load_checkpoint(damaged)
    assert "weights_only" not in str(info.value)


def test_backbone_file_with_unexpected_keys_is_reported(tiny_seg_bundle, tmp_path):
    bundle = load_bundle(tiny_seg_bundle)
    state = {f"module.backbone.{k}": v for k, v in bundle.network.encoder.state_dict().items()}
    state["head.mlp.weight"] = torch.zeros(3, 3)  # a DINO projection head: not part of the encoder
    torch.save({"teacher": state}, tmp_path / "dino.pt")
    loaded = load_bundle(tiny_seg_bundle, backbone=str(tmp_path / "dino.pt"))
    assert any("Ignored 1 tensor(s)" in n and "head.mlp.weight" in n for n in loaded.notes)


def test_backbone_missing_encoder_tensors_is_an_error(tiny_seg_bundle, tmp_path):
    bundle = load_bundle(tiny_seg_bundle)
    state = dict(bundle.network.encoder.state_dict())
    state.pop("encoder10.layer.conv1.conv.weight")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(BundleError, match="lack 1 tensor.*encoder10.layer.conv1.conv.weight"):
        load_bundle(tiny_seg_bundle, backbone=str(tmp_path / "partial.pt"))


def test_hub_backbone_is_read_from_the_local_cache_offline(tiny_seg_bundle, tmp_path):
    """The real hub code path in a fresh process, served offline from a cache laid out as
    huggingface_hub stores it (no machine of ours reaches the Hub)."""
    import numpy as np
    import SimpleITK as sitk
    from safetensors.torch import save_file

    bundle = load_bundle(tiny_seg_bundle)
    repo = tmp_path / "hub" / "models--kaiko-ai--coralbay-test"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    tensors = {f"backbone.{k}": v.contiguous() for k, v in bundle.network.encoder.state_dict().items()
               if not k.endswith("relative_position_index")}
    save_file(tensors, str(repo / "snapshots" / commit / "model.safetensors"))
    ct = sitk.GetImageFromArray(np.full((16, 16, 16), 40, np.int16))
    ct.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    # A bundle whose manifest names its backbone on the hub: pinned revision, checksum verified.
    from coralbay.bundle.weights import sha256_of

    pinned, tampered = tmp_path / "pinned", tmp_path / "tampered"
    shutil.copytree(tiny_seg_bundle, pinned)
    manifest = json.loads((pinned / "manifest.json").read_text())
    snapshot_file = repo / "snapshots" / commit / "model.safetensors"
    manifest["backbone_source"] = {"hub_id": "kaiko-ai/coralbay-test", "revision": commit,
                                   "sha256": sha256_of(snapshot_file)}
    (pinned / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(pinned, tampered)
    manifest["backbone_source"]["sha256"] = "0" * 64
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    segment = ("segment", tmp_path / "ct.nii.gz", "-m")
    # One fresh interpreter (the hub code never loaded before it) runs the five commands.
    ok, missing, unpinned, ok_pinned, bad = run_cli_many(
        [*segment, tiny_seg_bundle, "-o", tmp_path / "seg.nii.gz", "--backbone", "kaiko-ai/coralbay-test@main",
         "--progress", "jsonl"],
        [*segment, tiny_seg_bundle, "-o", tmp_path / "seg2.nii.gz", "--backbone", "kaiko-ai/not-cached@main"],
        [*segment, tiny_seg_bundle, "-o", tmp_path / "seg3.nii.gz", "--backbone", "kaiko-ai/coralbay-test"],
        [*segment, pinned, "-o", tmp_path / "seg4.nii.gz", "--progress", "jsonl"],
        [*segment, tampered, "-o", tmp_path / "seg5.nii.gz"], env=env)
    assert ok.returncode == 0, ok.stderr
    assert "Loaded " in ok.stdout and "kaiko-ai/coralbay-test@main" in ok.stdout
    assert missing.returncode == 1 and "Hugging Face Hub" in missing.stderr
    assert not (tmp_path / "seg2.nii.gz").exists()
    assert unpinned.returncode == 1 and "Give the hub revision to pin" in unpinned.stderr
    assert ok_pinned.returncode == 0 and f"kaiko-ai/coralbay-test@{commit}" in ok_pinned.stdout, ok_pinned.stderr
    assert bad.returncode == 1 and "does not match its checksum" in bad.stderr
    assert not (tmp_path / "seg5.nii.gz").exists()


def test_hub_id_parsing():
    assert parse_hub_id("kaiko-ai/coralbay") == ("kaiko-ai/coralbay", None)
    assert parse_hub_id("hf:kaiko-ai/coralbay@v1.0") == ("kaiko-ai/coralbay", "v1.0")
    assert parse_hub_id("/abs/path.pt") is None


def test_catalog_add_list_remove(tiny_seg_bundle, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("CORALBAY_HOME", str(tmp_path / "home"))
    from coralbay.bundle.catalog import add_model, list_models, remove_model, resolve_model

    add_model(tiny_seg_bundle)
    assert resolve_model("tiny-seg") == read_manifest(tiny_seg_bundle).folder
    assert "tiny-seg" in [m.name for m in list_models()]
    listed = cli("models", "--json")  # CORALBAY_HOME is inherited from the patched environment
    assert "tiny-seg" in [m["name"] for m in json.loads(listed.stdout)]
    remove_model("tiny-seg")
    assert "tiny-seg" not in [m.name for m in list_models()]
    with pytest.raises(BundleError, match="No model named 'tiny-seg'"):
        resolve_model("tiny-seg")


def test_validate_manifest_requires_labels_for_segmentation(tiny_seg_bundle):
    manifest = json.loads((tiny_seg_bundle / "manifest.json").read_text())
    manifest.pop("labels")
    with pytest.raises(BundleError, match="needs labels"):
        validate_manifest(manifest)
