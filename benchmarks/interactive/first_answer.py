"""Time from `open` to the first answer on a fresh scan (no cache), one click per structure.

Run (one thread; MODE = lazy, or eager for every window at open; `old` = a Session without the
lazy option, i.e. the code before lazy features, run from that checkout):
  PYTHONPATH=CoralBaySlicer OMP_NUM_THREADS=1 python benchmarks/interactive/first_answer.py CT LABELS MODE
The first structure's time includes the per-process reference projection; each structure re-opens
the scan (no cache), so each line is a fresh open. LABELS needs its `.labels.json` beside it.
"""
import json
import sys
import time

import SimpleITK as sitk

from coralbay.bundle.catalog import resolve_model
from coralbay.bundle.loader import load_bundle
from coralbay.interactive import prompts as P
from coralbay.interactive import simulate as S
from coralbay.interactive.engine import read_volume
from coralbay.interactive.session import Session

ct, labels_path, mode = sys.argv[1:4]
bundle = load_bundle(resolve_model("demo-phantom-seg"))
image = read_volume(ct)
labels = sitk.GetArrayFromImage(read_volume(labels_path))
table = json.load(open(labels_path.replace(".nii.gz", ".labels.json")))["labels"]
session = Session(bundle, None, **({} if mode == "old" else {"lazy": mode == "lazy"}))
for name in ("liver", "kidney_left", "aorta"):
    value = next(e["value"] for e in table if e["name"] == name)
    reference = labels == value
    start = time.perf_counter()
    session.open_scan(image, ct)
    opened = time.perf_counter() - start
    session.start(name, value)
    click = S.next_click(None, reference, image)
    answer = session.prompt(P.point(image, click.lps, click.positive))
    first = time.perf_counter() - start
    lazy = getattr(session, "features", None)
    windows = (None if lazy is None or not hasattr(lazy, "run")
               else f"{len(lazy.run.todo) - len(lazy.pending)}/{len(lazy.run.todo)}")
    print(json.dumps({"structure": name, "open_s": round(opened, 2), "first_answer_s": round(first, 2),
                      "dice": round(S.dice(answer.mask, reference), 4), "windows": windows}), flush=True)
