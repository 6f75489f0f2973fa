"""Child process of the reader fuzzer: reads the files it is told to and reports what happened.

Why a child: SimpleITK/ITK/GDCM are C++; a hostile header could crash or hang the process. The
parent (fuzz_support.ReaderSandbox) sees a crash as the child's death and a hang as a timeout,
and starts a new child. Requests arrive as JSON lines on stdin; answers leave as JSON lines on the
file descriptor given as argv[1] (stdout/stderr may carry C++ library noise).

The child caps its address space, so that a reader which allocates what a hostile header
declares fails here instead of pushing the shared test machine into swapping; such a failure
is reported as a failure of the property (the engine must refuse before allocating).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback

ADDRESS_SPACE_LIMIT = 3 << 30


def describe_image(image) -> dict:
    import numpy as np

    array = np.asarray(__import__("SimpleITK").GetArrayViewFromImage(image))
    return {
        "dimension": image.GetDimension(),
        "components": image.GetNumberOfComponentsPerPixel(),
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "finite": bool(np.all(np.isfinite(array))) if array.dtype.kind == "f" else True,
        "sum": float(array.sum(dtype=np.float64)),
        "notes": [image.GetMetaData(k) for k in image.GetMetaDataKeys() if k.startswith("coralbay:")],
    }


def handle(request: dict) -> dict:
    from coralbay.errors import CoralBayError
    from coralbay.io import label_maps
    from coralbay.io import volumes as volume_io

    path, reader = request["path"], request.get("reader", "volume")
    if reader == "selftest-abort":  # proves the parent sees a C++-style crash (SIGABRT)
        os.abort()
    if reader == "selftest-hang":  # proves the parent sees a reader that never returns
        import time

        time.sleep(3600)
    try:
        function = {"volume": volume_io.read_volume, "label": label_maps.read_label_map,
                    "any": volume_io.read_image_any,
                    "labels": lambda p: label_maps.read_labels(p).image}[reader]
        return {"status": "ok", "image": describe_image(function(path))}
    except CoralBayError as exc:
        return {"status": "error", "type": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - the point is to report anything else
        return {"status": "unexpected", "type": type(exc).__name__, "message": str(exc)[:2000],
                "traceback": traceback.format_exc()[-4000:]}


def main() -> None:
    answer_fd = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    import SimpleITK  # noqa: F401 - import once, before the first request is timed

    with os.fdopen(answer_fd, "w", buffering=1) as answers:
        answers.write(json.dumps({"status": "ready"}) + "\n")
        for line in sys.stdin:
            answers.write(json.dumps(handle(json.loads(line))) + "\n")


if __name__ == "__main__":
    main()
