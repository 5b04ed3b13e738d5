"""Label-wise resampling of a many-label map, one-hot maps against the corner vote (``unireg.resample``).

    python benchmarks/label_resampling.py [--labels 4,12,45,110] [--threads 2] [--size 256] [--shift 0.37] [--one-hot-max 64]

A label map of ``--size``^3 voxels at 1 mm (blocks of 8 voxels, each one of ``L`` labels: as many boundaries
as a parcellation), its voxel centres ``--shift`` mm off the target's along each axis, is resampled onto a
1 mm head's grid (197x233x189, the MNI template's) through
:func:`unireg.resample.resample_fixed_grid`, the pass ``unireg register --labels`` makes, once through one-hot
maps (``VOTE_MIN_LABELS`` above ``L``) and once through the vote among grid corners (``VOTE_MIN_LABELS`` = 0),
each in its own process (the one-hot maps only up to ``--one-hot-max`` labels: a 110-label map, as many
as a FreeSurfer ``aparc+aseg``, would need ~16 GB of them).  Printed: seconds of the pass, the process's peak RSS (MiB), and whether the two
label maps are equal (they differ only where labels tie exactly).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
import unireg.resample as R
L, size, threads, vote, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
shift = float(sys.argv[6])
torch.set_num_threads(threads)
R.VOTE_MIN_LABELS = 0 if vote else 10**9
rng = np.random.default_rng(0)
n = (size + 7) // 8
lab = rng.integers(0, L, size=(n, n, n)).astype(np.int32).repeat(8, 0).repeat(8, 1).repeat(8, 2)[:size, :size, :size]
moving = rng.random((1, size, size, size), dtype=np.float32)
m_aff = np.eye(4); m_aff[:3, 3] = -size / 2 + shift
f_shape = (197, 233, 189); f_aff = np.eye(4); f_aff[:3, 3] = [-98, -116, -94]
w_shape = (99, 117, 95); w_aff = np.diag([2.0, 2.0, 2.0, 1.0]); w_aff[:3, 3] = [-98, -116, -94]
t = time.perf_counter()
res = R.resample_fixed_grid(f_shape, f_aff, w_aff, np.eye(4), torch.zeros(1, 3, *w_shape), torch.ones(w_shape),
                            moving, m_aff, labels=lab)
sec = time.perf_counter() - t
np.save(out, res["labels"])
print(json.dumps({"s": sec, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(labels: int, size: int, threads: int, vote: bool, out: str, shift: float) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(labels), str(size), str(threads), "1" if vote else "0", out,
                        str(shift)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    import os
    import tempfile

    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="4,12,45,110")
    ap.add_argument("--one-hot-max", type=int, default=64, help="beyond this many labels, the vote only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shift", type=float, default=0.37, help="mm between the two grids' voxel centres (each axis)")
    a = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}, {a.threads} thread(s), a {a.size}^3 map onto 197x233x189")
    print("| labels | one-hot s | one-hot peak MiB | vote s | vote peak MiB | same map |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in a.labels.split(",")):
            vote = run(n, a.size, a.threads, True, f"{tmp}/vote.npy", a.shift)
            if n <= a.one_hot_max:
                one = run(n, a.size, a.threads, False, f"{tmp}/one.npy", a.shift)
                same = np.array_equal(np.load(f"{tmp}/one.npy"), np.load(f"{tmp}/vote.npy"))
                cells = [n, f"{one['s']:.1f}", f"{one['peak_mib']:.0f}"]
            else:
                cells, same = [n, "-", "-"], "-"
            cells += [f"{vote['s']:.1f}", f"{vote['peak_mib']:.0f}", same]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
