"""Copy a training checkpoint into the package: set ``meta`` (name, default_refine, validation
notes) and drop the optimiser state (keeps the file small; resume from the runs/ checkpoint).

    python experiments/ship_model.py runs/unireg_3d.pt src/unireg/weights/unireg_3d.pt --name unireg_3d --default-refine 30
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--name", required=True)
    ap.add_argument("--default-refine", type=int, default=None)
    args = ap.parse_args()
    ckpt = torch.load(args.src, map_location="cpu", weights_only=False)
    meta = ckpt["config"].setdefault("meta", {})
    meta["name"] = args.name
    if args.default_refine is not None:
        meta["default_refine"] = args.default_refine
    extra = ckpt.get("extra", {})
    extra.pop("optimizer", None)
    ckpt["extra"] = extra
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    dst = Path(args.dst)
    tmp = dst.with_name(f".tmp-{os.getpid()}-{dst.name}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, dst)
    print(f"{dst}: {dst.stat().st_size / 1e6:.2f} MB, steps {meta.get('steps')}, default_refine {meta.get('default_refine')}")


if __name__ == "__main__":
    main()
