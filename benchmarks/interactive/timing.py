"""Run: PYTHONPATH=CoralBaySlicer OMP_NUM_THREADS=2 python benchmarks/interactive/timing.py > benchmarks/interactive/timing.json

Seconds per interaction on a full-size phantom grid (414 x 345 x 40, 0.72 x 0.72 x 5 mm), features cached."""
import time, json, numpy as np, SimpleITK as sitk
from coralbay.bundle.loader import load_bundle
from coralbay.interactive.session import Session
from coralbay.interactive import prompts as P, simulate as S
from coralbay.phantom import generate_phantom
import tempfile
ph = generate_phantom(10000)  # its own random grid: 414 x 345 x 40 voxels of 0.72 x 0.72 x 5 mm
img, lab = ph.image, sitk.GetArrayFromImage(ph.labels)
s = Session(load_bundle('demo-phantom-seg'), tempfile.mkdtemp())
t=time.time(); v=s.open_scan(img); s.compute_features(); first=time.time()-t  # features are lazy: all windows now
t=time.time(); v=s.open_scan(img); second=time.time()-t
out={"grid": list(img.GetSize()), "spacing": list(img.GetSpacing()), "features_first_open_s": round(first,2), "features_cached_open_s": round(second,2)}
for value,name in ((3,'kidney_left'),(1,'liver')):
    ref=lab==value; s.start(name); pred=None; ts=[]; d=[]
    for k in range(5):
        c=S.next_click(pred,ref,img); t=time.time(); a=s.prompt(P.point(img,c.lps,c.positive)); ts.append(time.time()-t); pred=a.mask; d.append(S.dice(pred,ref))
    out[name]={"reference_ml": round(float(ref.sum()*np.prod(img.GetSpacing())/1000),1), "seconds": [round(x,2) for x in ts], "median_s": round(float(np.median(ts)),2), "dice": [round(x,3) for x in d]}
print(json.dumps(out))
