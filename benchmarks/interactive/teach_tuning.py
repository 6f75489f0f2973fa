"""Development tuning of `coralbay teach` (issue #24): development phantoms 10000-10002 only.

    PYTHONPATH=CoralBaySlicer:benchmarks OMP_NUM_THREADS=2 python benchmarks/interactive/teach_tuning.py \
        WORK '{"name": {"request": {"steps": 120}, "config": {"frozen_modules": []}}}' OUT.json

Each named variant is one in-process `teach_bundle` on the accepted references of the first NSCAN
(environment, default 5) example scans 10010-10014, with `request` as TeachRequest fields and
`config` as SegmentationTraining fields replaced in the teach's training config; the held-out
crops' Dice curve is recorded and the model scored on the development phantoms (the teach
targets' `dice_table`). Results are added to OUT.json under the variant's name.
"""
import sys, os, json, time, resource, subprocess
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
work = Path(sys.argv[1]); work.mkdir(parents=True, exist_ok=True)
os.environ['CORALBAY_HOME'] = str(work / 'home')
import teach as bench, teach_targets as tt
import SimpleITK as sitk
import coralbay.training.teach as teach
import coralbay.training.api as api
from coralbay.bundle.loader import load_bundle
base = load_bundle(bench.BASE)
scans = [10010, 10011, 10012, 10013, 10014]
nscan = int(os.environ.get('NSCAN', '5'))
# More development phantoms scored beside the declared three (10003-10004: the demo model's held-out
# phantoms, never teach test data), for a less noisy comparison: EXTRA=10003,10004.
EXTRA = [int(x) for x in os.environ.get('EXTRA', '').split(',') if x]
ex = work / f'examples-{nscan}'
for s in scans[:nscan]:
    bench.accept_reference(*bench.phantom(s, work), ex, base)
cases = []
for s in [10000, 10001, 10002] + EXTRA:
    ct, lab = bench.phantom(s, work); cases.append((f'p{s}', sitk.ReadImage(str(ct)), sitk.ReadImage(str(lab))))
configs = json.loads(sys.argv[2])
commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                        cwd=Path(__file__).resolve().parent).stdout.strip()
out = Path(sys.argv[3])
results = json.loads(out.read_text()) if out.exists() else {}
orig_cfg = api.train_segmentation_bundle
hist = {}
orig_train = api.train_segmentation
def train_wrap(*a, **k):
    r = orig_train(*a, **k); hist['h'] = [h for h in r.history if 'holdout_mean_dice' in h]; return r
api.train_segmentation = train_wrap
for name, cfg in configs.items():
    over = cfg.get('config', {})
    req = cfg.get('request', {})
    teach.train_segmentation_bundle = lambda config, reporter=None, over=over: orig_cfg(replace(config, **over), reporter)
    t0, c0 = time.perf_counter(), time.process_time()
    res = teach.teach_bundle(teach.TeachRequest(examples=ex, base=bench.BASE, name=name, output=work / name, add_to_catalog=False, **req))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tr = res.metrics['training']
    d = tt.dice_table(work / name, cases)
    if EXTRA:  # 'mean' and 'dice' stay those of the declared development phantoms 10000-10002
        every = d
        declared = {n: round(sum(c[n] for c in list(every['per_case'].values())[:3]) / 3, 4) for n in every['dice']}
        d = {'dice': declared, 'mean_dice': round(sum(declared.values()) / len(declared), 4)}
    results[name] = {'commit': commit, 'cfg': cfg, 'wall': round(wall,1), 'cpu': round(cpu,1), 'load': os.getloadavg()[0], 'steps': tr['steps'], 'chosen': tr['chosen_step'], 'stopped': tr['stopped'],
                     'holdout': tr.get('holdout_dice'), 'curve': [(h['step'], h['holdout_mean_dice']) for h in hist['h']],
                     'mean': d['mean_dice'], 'dice': d['dice'],
                     **({'extra': EXTRA, 'mean_with_extra': every['mean_dice'], 'dice_with_extra': every['dice']} if EXTRA else {})}
    print(name, results[name]['mean'], results[name].get('mean_with_extra'), d['dice'], 'steps', tr['steps'], tr['stopped'], 'wall', round(wall), 'cpu', round(cpu), 'curve', results[name]['curve'], flush=True)
    out.write_text(json.dumps(results, indent=1))
