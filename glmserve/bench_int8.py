"""INT8 weight-only rows of the engine benchmark (``make bench INT8=1``, ``glmserve.bench --int8``).

The real ChatGLM-6B config with random fp16 weights made on the GPU; int8 = the
same fp16 weights quantized on the GPU at load (per output channel, the
converter's scheme). For every batch size the fp16 and the int8 engine run back
to back in the same process on the same card, so the ratio compares like with
like. Also: the logits relative error of int8 against fp16 (full-size model,
one prompt fed in chunks), the weight memory of both, and the KV cache blocks
each gets from the same free memory.

    python -m glmserve.bench_int8 [--batches 1,8,64,128,256] [--int8-lm-head] [--w8a8 N] [--fp8]
                                  [--out FILE]
                                  [--cuda-<option> VALUE ...]

The rows, the accuracy and the memory measurements are glmserve.bench_common's
(``run_int8``), which ``glmserve.bench --int8`` shows too.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from glmserve import bench_common as common


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(p)
    common.add_low_precision_args(p)
    p.add_argument("--profile-batches", default="", help="kernel-time tables for these batches")
    p.add_argument("--speed-only", action="store_true", help="tokens/s rows only")
    p.add_argument("--out")
    args = p.parse_args(argv)
    args.profile_batches = [int(x) for x in args.profile_batches.split(",") if x]
    args.profile = bool(args.profile_batches)
    import torch

    if not torch.cuda.is_available():
        print("bench_int8: no CUDA device", file=sys.stderr)
        return 2
    from glmserve import _engine

    dev = torch.cuda.get_device_name()
    print(f"device: {dev}", flush=True)
    base_used = common.used_gpu_bytes(torch)
    batches = [int(x) for x in args.batches.split(",") if x]
    with tempfile.TemporaryDirectory() as d:
        common.write_real_config(d)
        data, md = common.run_int8(_engine, d, batches, args, torch, base_used)
    when, header = common.report_header(dev, "glmserve.bench_int8", argv)
    kernels = sorted({r.get("backend", "") for rs in data["rows"].values() for r in rs} - {""})
    if kernels:
        header += "Engine back-end: " + "; ".join(kernels) + "\n\n"
    print("\n" + header + md)
    if args.out:
        Path(args.out).write_text(
            header
            + md
            + "\n\n```json\n"
            + json.dumps({"device": dev, "date": when, **data}, indent=1)
            + "\n```\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
