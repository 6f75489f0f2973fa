"""Where MONAI's Invertd(nearest) takes each input voxel's label from, on the model grid of the bench's
lung1 copy (run coralbay bench ... --keep /tmp/bench/keep first). Run:
PYTHONPATH=CoralBaySlicer python benchmarks/diagnostics/monai_invert_ties.py
"""
import numpy as np, torch, SimpleITK as sitk
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd, Invertd
path = "/tmp/bench/keep/input_1.5mm.nrrd"
spatial = Compose([Orientationd(keys="image", axcodes="RAS"), Spacingd(keys="image", pixdim=(4.0, 4.0, 4.0), mode="bilinear")])
data = spatial(Compose([LoadImaged(keys="image"), EnsureChannelFirstd(keys="image")])({"image": path}))
img = data["image"]; shp = img.shape[1:]
for axis in range(3):
    idx = np.broadcast_to(np.arange(shp[axis]).reshape([-1 if a == axis else 1 for a in range(3)]), shp).astype(np.float32)
    data["pred"] = MetaTensor(torch.from_numpy(idx.copy())[None], affine=img.affine, meta=img.meta, applied_operations=img.applied_operations)
    out = Invertd(keys="pred", transform=spatial, orig_keys="image", nearest_interp=True)(dict(data))["pred"][0].numpy()
    ref = sitk.ReadImage(path)
    # exact continuous model index of each input voxel centre along `axis` (RAS model grid)
    aff = np.asarray(img.affine)
    n = ref.GetSize()
    ijk = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), -1).reshape(-1, 3)
    lps = np.asarray(ref.GetOrigin()) + (ijk * np.asarray(ref.GetSpacing())) @ np.asarray(ref.GetDirection()).reshape(3, 3).T
    ras = lps * np.array([-1, -1, 1])
    cont = (np.linalg.inv(aff) @ np.c_[ras, np.ones(len(ras))].T)[axis]
    got = out.reshape(-1)
    diff = got - cont
    print("axis", axis, "MONAI picked - exact continuous index: min %.3f max %.3f" % (diff.min(), diff.max()),
          "fraction |diff|>0.5:", float(np.mean(np.abs(diff) > 0.5 + 1e-6)))
    tie = np.abs(np.abs(diff) - 0.5) < 1e-3
    picked = got[tie]
    print("  ties", int(tie.sum()), "picked even", float(np.mean(picked % 2 == 0)), "picked up (+0.5)", float(np.mean(diff[tie] > 0)))
