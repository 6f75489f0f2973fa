"""What verifying compressed data costs: `read_volume` (header checks + the whole gzip stream
decompressed once to check its length and CRC, then ITK's read) against ITK's read alone, on
the same files in the same process, as a ratio of median times.

    PYTHONPATH=CoralBaySlicer python benchmarks/read_check.py ../shared/data/realct_dev/sts_0*/image.nii.gz \
        --json benchmarks/cpu/read-check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from coralbay.io.header_checks import check_compressed_data, check_header
from coralbay.io.volumes import read_volume


def median_seconds(read, path: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        read(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for path in args.files:
        itk = median_seconds(lambda p: sitk.ReadImage(str(p)), path, args.repeat)
        ours = median_seconds(read_volume, path, args.repeat)
        stream = median_seconds(lambda p: check_compressed_data(check_header(p)), path, args.repeat)
        rows.append({"file": str(path), "megabytes": round(path.stat().st_size / 2**20, 2),
                     "itk_s": round(itk, 4), "read_volume_s": round(ours, 4), "stream_check_s": round(stream, 4),
                     "ratio": round(ours / itk, 3), "stream_check_ratio": round(stream / itk, 3)})
        print(f"{path}: read_volume / ITK = {ours / itk:.2f}, the stream check alone / ITK = {stream / itk:.2f}")
    summary = {"command": " ".join(sys.argv), "repeat": args.repeat, "files": rows,
               "median_ratio": round(statistics.median(r["ratio"] for r in rows), 3),
               "median_stream_check_ratio": round(statistics.median(r["stream_check_ratio"] for r in rows), 3)}
    print(f"median ratios: read_volume {summary['median_ratio']}, stream check {summary['median_stream_check_ratio']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
