"""``stages.affine``: ``--transform affine`` in stages (rigid, then affine), as antsRegistrationSyN.sh -t a."""

import threading
from pathlib import Path

import numpy as np
import torch

from unireg import api
from unireg.stages import affine as stage

from ..benchmarks.scripts import load_script, needs

ROOT = Path(__file__).resolve().parents[2]
RIGID = ROOT / "benchmarks" / "rigid.py"
pytestmark = needs(RIGID, "dipy")


def test_affine_mode_starts_from_the_rigid_stage_where_the_affine_search_alone_goes_astray(monkeypatch):
    """A T2-like body phantom on 1x1x3 mm slices turned by ~20 degrees (rigid.py's construction, a development
    draw: seed 777001, pair 982, not the frozen list).  The affine search alone lands 8.8 mm from the true map
    (a stretched, sheared fit the feature cost prefers); the rigid stage finds it, and the staged affine keeps
    what the referee scores higher from both images."""
    mod = load_script(RIGID)
    monkeypatch.setattr(mod, "RIGID_SEED", 777001)
    monkeypatch.setattr(mod, "INDEX0", 980)
    case = mod.cases([3], 3)[2]
    assert case["name"] == "3d_rigid_02_body_piecewise_aniso"

    staged = api.register(case["fixed"], case["moving"], transform="affine")
    reason = staged.report["stages"]["affine"]["reason"]
    assert "rigid, then affine" in reason and "the rigid stage:" in reason
    assert mod.errors(case, staged.affine_matrix)[0] < 0.6

    monkeypatch.setitem(stage.RIGID_FIRST["affine"], 3, False)  # the affine search alone, as before
    alone = api.register(case["fixed"], case["moving"], transform="affine")
    assert "rigid, then affine" not in alone.report["stages"]["affine"]["reason"]
    assert mod.errors(case, alone.affine_matrix)[0] > 3.0


def test_the_stages_run_only_where_chosen(monkeypatch):
    """Rigid mode and the 2-D deformable pipeline keep the one search; 2-D affine mode stages it."""
    mod = load_script(RIGID)
    case = mod.cases([2], 1)[0]
    for transform, staged in (("rigid", False), ("deformable", False), ("affine", True)):
        kw = {"refine": 0} if transform == "deformable" else {}
        r = api.register(case["fixed"], case["moving"], transform=transform, **kw)
        assert ("rigid, then affine" in r.report["stages"]["affine"]["reason"]) is staged, transform
    assert stage.RIGID_FIRST["deformable"][3] and not stage.RIGID_FIRST["deformable"][2]


def test_the_rigid_answers_mi_runs_beside_the_affine_search_and_changes_nothing(monkeypatch):
    """:data:`stages.affine.PARALLEL_STAGES`: MI from the rigid answer (its own seeded draws) goes to a worker
    thread while the affine search runs on the main one, where the caller gave two threads or more (a small 2-D
    pair's stages run on one, the second core is free); the matrix is the same bit for bit as in line."""
    mod = load_script(RIGID)
    case = mod.cases([2], 1)[0]
    where: list[str] = []
    real = stage._working_mi

    def spy(s, identity):
        refine = real(s, identity)

        def run(m, levels):
            where.append(threading.current_thread().name)
            return refine(m, levels)

        return run

    monkeypatch.setattr(stage, "_working_mi", spy)
    threads = torch.get_num_threads()
    runs = {}
    try:
        for parallel, caller in ((True, 2), (False, 2), (True, 1)):
            monkeypatch.setattr(stage, "PARALLEL_STAGES", parallel)
            torch.set_num_threads(caller)
            where.clear()
            r = api.register(case["fixed"], case["moving"], transform="affine")
            assert "scales and shears added to it by intensity MI" in r.report["stages"]["affine"]["reason"]
            runs[parallel, caller] = (r.affine_matrix, [w.startswith("unireg-affine-from-rigid") for w in where])
    finally:
        torch.set_num_threads(threads)
    assert all(np.array_equal(m, runs[True, 2][0]) for m, _ in runs.values())
    assert any(runs[True, 2][1]) and not any(runs[False, 2][1]) and not any(runs[True, 1][1])


def test_the_two_searches_share_their_starts_and_each_optimises_its_own_parameters(monkeypatch):
    """The staged affine's rigid and affine searches start from the same raw starts, frames and coarse ranking
    (computed once); each optimises its own parameters in every frame: rotations and translations, then all."""
    mod = load_script(RIGID)
    case = mod.cases([2], 1)[0]
    starts, modes = [], []
    real_starts, real_optimise = stage._centroid_starts, stage.optimize_affine

    def count_starts(*a, **k):
        starts.append(1)
        return real_starts(*a, **k)

    def record(*a, rigid=False, **k):
        modes.append(rigid)
        return real_optimise(*a, rigid=rigid, **k)

    monkeypatch.setattr(stage, "_centroid_starts", count_starts)
    monkeypatch.setattr(stage, "optimize_affine", record)
    r = api.register(case["fixed"], case["moving"], transform="affine")
    assert "rigid, then affine" in r.report["stages"]["affine"]["reason"]
    assert len(starts) == 1
    first_affine = modes.index(False)  # the rigid search's runs, then the affine search's
    assert first_affine > 0 and all(modes[:first_affine]) and not any(modes[first_affine:])
