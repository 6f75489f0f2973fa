"""Run: PYTHONPATH=CoralBaySlicer python benchmarks/diagnostics/model_grid_agreement.py ../shared/data/pyradiomics/lung1_image.nrrd

Diagnostic: labels on the model grid, ours (prepare + blend_slabs) vs MONAI (transforms +
sliding_window_inference)."""
import sys, tempfile
from pathlib import Path
import numpy as np, torch
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, Spacing, ScaleIntensityRange
from monai.inferers import sliding_window_inference
from coralbay.bundle.loader import load_bundle
from coralbay.inference.fast_swin import disable_fast_swin
from coralbay.inference.preprocess import prepare
from coralbay.inference.sliding_window import sliding_window_logits
from coralbay.io.volumes import read_volume
from coralbay_bench.inputs import resampled_copy
torch.set_num_threads(1)
b = load_bundle("demo-phantom-seg"); m = b.manifest; pre, inf = m.preprocessing, m.inference
path = resampled_copy(sys.argv[1], 1.5, Path(tempfile.mkdtemp()))
img = read_volume(path)
p = prepare(img, pre, windows=inf.windows(overlap=0.5))
lo, hi = pre["intensity_window_hu"]
d = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS"),
             Spacing(pixdim=pre["spacing_mm"], mode="bilinear"), ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)])(str(path))
mon = np.asarray(d[0])
print("shapes", p.array.shape, mon.shape)
net = b.network.eval(); disable_fast_swin(net)
with torch.inference_mode():
    ml = sliding_window_inference(torch.from_numpy(mon)[None, None], inf["window_size"], 2, net, overlap=0.5, mode="gaussian", sigma_scale=inf["sigma_scale"])[0]
    ol = sliding_window_logits(p.array, net, m.num_outputs, inf.windows(overlap=0.5, batch_size=2))
ol = ol[0]
print("logit shapes", tuple(ml.shape), tuple(ol.shape))
# our crop's offset in MONAI's grid
origin_m = np.asarray(d.affine)[:3, 3]; origin_o = np.diag([-1, -1, 1]) @ np.asarray(p.grid.GetOrigin())
off = np.round((origin_o - origin_m) / np.asarray(pre["spacing_mm"])).astype(int); print("offset", off)
sl = tuple(slice(o, o + n) for o, n in zip(off, ol.shape[1:]))
mlc = ml[(slice(None),) + sl]
print("input max diff", np.abs(p.array - mon[sl]).max())
print("logit max diff", float((mlc - ol).abs().max()))
a, c = mlc.argmax(0).numpy(), ol.argmax(0).numpy()
for v in range(1, m.num_outputs):
    x, y = a == v, c == v
    if x.sum() * 64 / 1000 > 1:
        print(v, "dice", round(2 * (x & y).sum() / (x.sum() + y.sum()), 5), "monai mL", x.sum() * 64 / 1000)
