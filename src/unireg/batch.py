"""Batch registration from a CSV manifest: resumable, one folder per pair, shardable over processes.

Manifest
--------
A CSV file with a header row.  Columns ``fixed`` and ``moving`` are required; ``labels`` (moving
label map), ``fixed_labels`` and ``id`` are optional (empty cells mean "none").  Relative paths are
resolved against the manifest's folder.  Without an ``id`` the pair is named
``<row index, 4 digits>_<moving file stem>``.  Ids are folder names: letters, digits, ``._-``, not
starting with a dot, unique.

Output (``DIR``)
----------------
``DIR/<id>/``      the files of :meth:`RegistrationResult.save` plus ``.done``
``DIR/summary.csv`` one row per manifest row, manifest order (:data:`SUMMARY_COLUMNS`)
``DIR/index.html``  sortable overview (:func:`unireg.reports.html.build_index`)
``DIR/summary.rank<r>.csv``  each rank's rows when run by several processes

Resuming
--------
A pair is finished only when ``DIR/<id>/.done`` exists and holds the hash of its manifest row and
the registration options (:func:`pair_hash`).  The marker is written atomically, after every output
file, so a crash or Ctrl-C at any point leaves either a finished pair or one without a marker.  On
the next run finished pairs are skipped (their summary row is kept in the marker); a pair folder
without a valid marker is wiped and the pair redone.  A changed row or changed options change the
hash, so that pair is redone too.  A pair that fails (bad input) is recorded in the summary with its
one-line error, leaves no folder behind and is retried on the next run.

Parallelism
-----------
Several processes (``torchrun``, one or several nodes; ``DIR`` on a shared file system) each take
the pairs ``i`` with ``i % WORLD_SIZE == RANK`` (env variables set by torchrun), write
``summary.rank<r>.csv``, meet at a gloo barrier, and rank 0 merges the rank files into
``summary.csv`` and writes ``index.html``.  See :mod:`unireg.batch_main`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from . import api
from .errors import UniRegError
from .io.atomic import atomic_path, check_output_dir
from .io.image import read_image
from .outputs import FORMATS, IMAGE_OUTPUTS, OUTPUT_NAMES, output_names
from .reports.html import build_index

__all__ = [
    "BatchOptions",
    "Pair",
    "read_manifest",
    "pair_hash",
    "shard",
    "run_batch",
    "dist_env",
    "SUMMARY_COLUMNS",
    "MARKER",
    "CRASH_ENV",
]

SUMMARY_COLUMNS = ["id", "status", "error", "runtime_s", "folded_percent", "sdlogj", "dice_mean", "qc_score", "qc_flag",
                   "verdict", "reason", "out_dir"]
MARKER = ".done"
#: test hook: ``UNIREG_BATCH_CRASH_AFTER=k`` makes a process die (exit status 3, no marker written)
#: right after *saving* the outputs of its (k+1)-th newly registered pair, i.e. mid-pair.
CRASH_ENV = "UNIREG_BATCH_CRASH_AFTER"
_HASH_VERSION = "unireg-batch-1"
_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_RESERVED = {"summary.csv", "index.html"}
_COLUMNS = ("fixed", "moving", "labels", "fixed_labels", "id", "fixed_mask", "moving_mask", "initial_transform")
_EXTRA = ("fixed_mask", "moving_mask", "initial_transform")  # optional per-pair inputs (ANTs-style)


class InjectedCrash(BaseException):
    """Raised by the :data:`CRASH_ENV` / ``crash_after`` test hook; a BaseException so that the
    per-pair error handling does not swallow it (it stands for SIGKILL / power loss)."""


@dataclass(frozen=True)
class BatchOptions:
    """Registration options shared by every pair (those of ``unireg register``)."""

    model: str | None = None
    extractor: str | None = None
    refine: int | None = None
    smoothness: float = 1.0
    affine: bool = True
    device: str = "cpu"
    seed: int = 0
    qc: bool = True
    extractor_weights: str | None = None
    fmt: str | None = None
    outputs: str | None = None
    transform: str = "deformable"

    def key(self) -> dict:
        """What goes into the resume hash (the model path resolved; a Registrar object by name)."""
        d = asdict(self)
        # later options: absent when unset, so older runs still resume
        for k in ("extractor_weights", "fmt", "outputs"):
            if d[k] is None:
                d.pop(k)
        if d["transform"] == "deformable":
            d.pop("transform")
        if d["model"] not in (None, "default"):
            m = d["model"]
            d["model"] = str(Path(m).resolve()) if isinstance(m, (str, os.PathLike)) else repr(m)
        return d


@dataclass(frozen=True)
class Pair:
    """One manifest row; paths absolute.  ``index`` is the 0-based data-row index."""

    index: int
    id: str
    fixed: str
    moving: str
    labels: str | None = None
    fixed_labels: str | None = None
    line: int = 0
    fixed_mask: str | None = None
    moving_mask: str | None = None
    initial_transform: str | None = None

    def inputs(self) -> list[str]:
        return [p for p in (self.fixed, self.moving, self.labels, self.fixed_labels, self.fixed_mask,
                            self.moving_mask, self.initial_transform) if p]


def _safe_stem(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".jpg", ".jpeg"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "pair"


def read_manifest(path: str | os.PathLike) -> list[Pair]:
    """Parse and validate a manifest (see the module docstring).

    Raises
    ------
    UniRegError
        Naming the manifest (and line): missing file, no header / no ``fixed``/``moving`` column,
        unknown column, empty cell in a required column, invalid or duplicate id, no rows.
        Input files are *not* checked here: a missing image fails only its own pair.
    """
    p = Path(path)
    if not p.is_file():
        raise UniRegError("manifest not found" if not p.exists() else "manifest is not a file", p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UniRegError("manifest is not a UTF-8 text (CSV) file", p) from None
    except OSError as e:
        raise UniRegError(f"cannot read manifest ({e.strerror or e})", p) from None
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        rows = list(reader)
    except csv.Error as e:
        raise UniRegError(f"malformed CSV ({e})", p) from None
    if not header:
        raise UniRegError("manifest is empty; expected a header with columns fixed,moving[,labels,fixed_labels,id]", p)
    missing = [c for c in ("fixed", "moving") if c not in header]
    if missing:
        raise UniRegError(f"manifest header lacks column(s) {', '.join(missing)} (header: {','.join(header)})", p)
    unknown = [h for h in header if h not in _COLUMNS]
    if unknown:
        raise UniRegError(f"unknown manifest column(s) {', '.join(unknown)}; expected {', '.join(_COLUMNS)}", p)
    base = p.resolve().parent
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(rows):
        line = i + 2  # header is line 1 (rows with embedded newlines make this approximate)
        if None in raw:
            raise UniRegError(f"line {line}: more cells than header columns", p)
        row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue  # blank line
        for c in ("fixed", "moving"):
            if not row.get(c):
                raise UniRegError(f"line {line}: empty '{c}' cell", p)

        def absolute(v: str) -> str:
            q = Path(os.path.expanduser(v))
            return str(q if q.is_absolute() else base / q)

        def res(v: str) -> str | None:
            return absolute(v) if v else None

        pid = row.get("id") or f"{len(pairs):04d}_{_safe_stem(row['moving'])}"
        if not _ID_RE.match(pid) or pid.lower() in _RESERVED or pid.startswith("summary.rank"):
            raise UniRegError(
                f"line {line}: invalid id {pid!r} (letters, digits and ._- only, not starting with '.', "
                "at most 128 characters, not a summary/index file name)", p)
        if pid in seen:
            raise UniRegError(f"line {line}: duplicate id {pid!r} (also on line {seen[pid]})", p)
        seen[pid] = line
        pairs.append(Pair(len(pairs), pid, absolute(row["fixed"]), absolute(row["moving"]), res(row.get("labels", "")),
                          res(row.get("fixed_labels", "")), line,
                          **{k: res(row.get(k, "")) for k in _EXTRA}))
    if not pairs:
        raise UniRegError("manifest has no pairs", p)
    return pairs


def pair_hash(pair: Pair, options: BatchOptions) -> str:
    """SHA-256 of the pair's row (absolute paths, id) and the options: what ``.done`` must hold."""
    payload = {
        "v": _HASH_VERSION,
        "row": {**{k: getattr(pair, k) for k in ("id", "fixed", "moving", "labels", "fixed_labels")},
                **{k: getattr(pair, k) for k in _EXTRA if getattr(pair, k)}},  # absent when unset: old runs resume
        "options": options.key(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def shard(pairs: Sequence[Pair], rank: int, world: int) -> list[Pair]:
    """The pairs of ``rank``: index ``i`` goes to rank ``i % world``."""
    return [q for q in pairs if q.index % world == rank]


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_world_size)`` from torchrun's environment (``0, 1, 1`` without)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        raise UniRegError("RANK / WORLD_SIZE / LOCAL_WORLD_SIZE must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise UniRegError(f"bad distributed environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, max(1, local)


# ----------------------------------------------------------------------------------------- markers
def _read_marker(pair_dir: Path) -> dict | None:
    try:
        m = json.loads((pair_dir / MARKER).read_text())
        return m if isinstance(m, dict) else None
    except (OSError, ValueError):
        return None


def _write_marker(pair_dir: Path, h: str, row: dict) -> None:
    with atomic_path(pair_dir / MARKER) as tmp:
        with open(tmp, "w") as f:
            f.write(json.dumps({"hash": h, "row": row}) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the marker must not reach the disk before its content does


def _our_files(pair_dir: Path) -> bool:
    """Whether every entry of ``pair_dir`` is something a batch run writes (safe to wipe)."""
    ours = set(OUTPUT_NAMES.values()) | {output_names(f)[k] for f in FORMATS for k in IMAGE_OUTPUTS} | {MARKER}
    for e in pair_dir.iterdir():
        if e.is_dir() or not (e.name in ours or e.name.startswith(".tmp-")):
            return False
    return True


def _prepare_dir(pair: Pair, pair_dir: Path) -> None:
    """Make ``pair_dir`` empty: wipe a half-written one, refuse to touch anything not ours."""
    if pair_dir.is_symlink() or (pair_dir.exists() and not pair_dir.is_dir()):
        raise UniRegError("exists and is not a folder; remove it or choose another --out", pair_dir)
    real = os.path.realpath(pair_dir)
    for inp in pair.inputs():
        if os.path.realpath(inp).startswith(real + os.sep):
            raise UniRegError("an input file lies inside this pair's output folder; choose another --out", inp)
    if pair_dir.exists():
        if not _our_files(pair_dir):
            raise UniRegError(
                "output folder holds files UniReg did not write; remove them or choose another --out", pair_dir)
        shutil.rmtree(pair_dir)
    pair_dir.mkdir(parents=True)


# ----------------------------------------------------------------------------------------- one pair
def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UniRegError):
        msg = str(exc)
    elif isinstance(exc, MemoryError):
        msg = "out of memory"
    elif isinstance(exc, OSError):
        msg = f"{exc.filename}: {exc.strerror}" if getattr(exc, "filename", None) and exc.strerror else str(exc)
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())[:500]


def _summary_row(pair: Pair, report: dict, runtime: float, out_dir: Path) -> dict:
    from .verdict import judge

    dice = report.get("dice")
    dice_mean = dice.get("mean") if isinstance(dice, dict) else None
    verdict_raw = report.get("verdict")
    verdict: dict = verdict_raw if isinstance(verdict_raw, dict) else judge(report)
    return {
        "id": pair.id,
        "status": "ok",
        "error": "",
        "runtime_s": round(runtime, 3),
        "folded_percent": report.get("folded_percent"),
        "sdlogj": report.get("sdlogj"),
        "dice_mean": dice_mean,
        "qc_score": report.get("qc_score"),
        "qc_flag": report.get("qc_flag"),
        "verdict": verdict["status"],
        "reason": "; ".join(verdict["reasons"]),
        "out_dir": str(out_dir),
    }


def _failed_row(pair: Pair, error: str, runtime: float) -> dict:
    return {"id": pair.id, "status": "failed", "error": error, "runtime_s": round(runtime, 3), "folded_percent": None,
            "sdlogj": None, "dice_mean": None, "qc_score": None, "qc_flag": None, "verdict": "failed", "reason": error,
            "out_dir": ""}


class _Models:
    """Models loaded once per dimensionality (``--model`` path: loaded once, whatever the pairs)."""

    def __init__(self, options: BatchOptions, model=None):
        self._api = api
        self.options = options
        self.cache: dict[int, object] = {}
        self.fixed = model
        if self.fixed is None and options.model not in (None, "default"):
            # a bad --model fails the whole run up front, not every pair
            self.fixed = api.load_model(options.model, extractor=options.extractor)

    def get(self, ndim: int):
        if self.fixed is not None:
            return self.fixed
        if ndim not in self.cache:
            self.cache[ndim] = self._api.load_model(None, ndim=ndim, extractor=self.options.extractor)
        return self.cache[ndim]


def _register_pair(pair: Pair, pair_dir: Path, models: _Models, options: BatchOptions, crash: Callable[[], None]) -> dict:
    t0 = time.perf_counter()
    fixed = read_image(pair.fixed)
    moving = read_image(pair.moving)
    if moving.ndim != fixed.ndim:
        raise UniRegError(f"moving image is {moving.ndim}-D but the fixed image is {fixed.ndim}-D", pair.moving)
    result = api.register(
        fixed, moving, model=models.get(fixed.ndim), extractor=options.extractor, labels=pair.labels,
        fixed_labels=pair.fixed_labels, affine=options.affine, refine=options.refine,
        smoothness=options.smoothness, device=options.device, seed=options.seed,
        extractor_weights=options.extractor_weights, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
        initial_transform=pair.initial_transform, transform=options.transform,
    )
    result.save(pair_dir, qc=options.qc, html=options.qc, fmt=options.fmt, outputs=options.outputs)
    crash()
    return _summary_row(pair, result.report, time.perf_counter() - t0, pair_dir.resolve())


# ----------------------------------------------------------------------------------------- summaries
def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):  # qc_flag: what CSV readers (pandas, R) parse as booleans
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in SUMMARY_COLUMNS})
    with atomic_path(path) as tmp:
        Path(tmp).write_text(buf.getvalue())


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(v):
    if v in (None, ""):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _index_rows(out: Path, rows: Sequence[dict]) -> list[dict]:
    res = []
    for r in rows:
        flag = r.get("qc_flag")
        if isinstance(flag, str):
            flag = {"true": True, "false": False}.get(flag.lower())
        res.append({
            "id": r["id"], "dir": r["id"], "dice": _num(r.get("dice_mean")),
            "folded_percent": _num(r.get("folded_percent")), "runtime_s": _num(r.get("runtime_s")),
            "qc_score": _num(r.get("qc_score")), "qc_flag": flag, "status": r.get("status"),
            "error": r.get("error") or None,
        })
    return res


def _merge(out: Path, pairs: Sequence[Pair], rank_rows: dict[int, list[dict]]) -> Path:
    """``summary.csv`` in manifest order, and ``index.html``."""
    by_id = {r["id"]: r for rows in rank_rows.values() for r in rows}
    rows = [by_id.get(q.id) or _failed_row(q, "no result (its process did not report)", 0.0) for q in pairs]
    _write_csv(out / "summary.csv", rows)
    try:
        build_index(out, _index_rows(out, rows))
    except UniRegError:
        raise
    except Exception as exc:  # the overview page must not cost the batch its summary
        warnings.warn(f"index.html not written: {_one_line(exc)}")
    return out / "summary.csv"


# ----------------------------------------------------------------------------------------- driver
def set_threads_for_local_world(local_world: int) -> int:
    """``torch.set_num_threads(max(1, cores // local_world))`` (cores available to this process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    n = max(1, cores // max(1, local_world))
    torch.set_num_threads(n)
    return n


def run_batch(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    options: BatchOptions | None = None,
    *,
    model=None,
    rank: int | None = None,
    world: int | None = None,
    progress: bool = True,
    on_pair: Callable[[dict], None] | None = None,
    crash_after: int | None = None,
) -> list[dict]:
    """Register every pair of ``manifest`` into ``out`` (resumable; see the module docstring).

    Parameters
    ----------
    manifest : CSV path.
    out : output folder (created).
    options : registration options (defaults of ``unireg register``).
    model : a :class:`~unireg.models.registrar.Registrar` to use instead of ``options.model``.
    rank, world : this process's shard; default from ``RANK``/``WORLD_SIZE`` (torchrun).  With
        ``world > 1`` a gloo process group is initialised (unless one exists) for the final barrier.
    progress : show a rich progress bar on stderr.
    on_pair : called with each pair's summary row as soon as it is known (``row["resumed"]`` is
        True for pairs skipped because they were already done).
    crash_after : test hook (default from ``UNIREG_BATCH_CRASH_AFTER``): after this many newly
        registered pairs, the next one is saved but :class:`InjectedCrash` is raised before its marker.

    Returns
    -------
    list of dict
        This rank's summary rows (manifest order).  Rank 0 also writes ``summary.csv`` and
        ``index.html`` covering all ranks.

    Raises
    ------
    UniRegError
        Bad manifest, unusable output folder or model.  Errors of single pairs are not raised;
        they are recorded in the summary.
    """
    options = options or BatchOptions()
    env_rank, env_world, local_world = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    if crash_after is None and os.environ.get(CRASH_ENV):
        crash_after = int(os.environ[CRASH_ENV])
    pairs = read_manifest(manifest)
    outp = check_output_dir(out)
    mine = shard(pairs, rank, world)
    models = _Models(options, model)

    group = None
    if world > 1:
        if not dist.is_initialized():
            # rank 0 waits at the barrier for the slowest rank's whole shard: allow a long wait
            timeout = timedelta(seconds=float(os.environ.get("UNIREG_BATCH_TIMEOUT_S", 7 * 86400)))
            dist.init_process_group("gloo", timeout=timeout)
            group = dist

    new_done = 0

    def crash():
        if crash_after is not None and new_done >= crash_after:
            raise InjectedCrash(f"injected crash after {new_done} pairs ({CRASH_ENV})")

    rows: list[dict] = []
    rank_file = outp / f"summary.rank{rank}.csv" if world > 1 else None
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[last]}"),
                       console=Console(stderr=True), transient=False)
    try:
        if bar is not None:
            bar.start()
            task = bar.add_task(f"rank {rank}/{world}" if world > 1 else "batch", total=len(mine), last="")
        for q in mine:
            pair_dir = outp / q.id
            h = pair_hash(q, options)
            marker = _read_marker(pair_dir) if pair_dir.is_dir() else None
            if marker is not None and marker.get("hash") == h and isinstance(marker.get("row"), dict):
                # the folder may have moved with DIR since: report where it is now
                row = dict(marker["row"], out_dir=str(pair_dir.resolve()), resumed=True)
            else:
                t0 = time.perf_counter()
                try:
                    _prepare_dir(q, pair_dir)
                    row = _register_pair(q, pair_dir, models, options, crash)
                    _write_marker(pair_dir, h, row)  # LAST: the pair is done from here on
                    new_done += 1
                except Exception as exc:  # one bad pair must not stop the others
                    row = _failed_row(q, _one_line(exc), time.perf_counter() - t0)
                    if pair_dir.is_dir() and _read_marker(pair_dir) is None and _our_files(pair_dir):
                        shutil.rmtree(pair_dir, ignore_errors=True)  # no half-written results left behind
                except KeyboardInterrupt:  # Ctrl-C: the pair in progress leaves no folder behind
                    if pair_dir.is_dir() and _read_marker(pair_dir) is None and _our_files(pair_dir):
                        shutil.rmtree(pair_dir, ignore_errors=True)
                    raise
                row["resumed"] = False
            rows.append(row)
            if rank_file is not None:
                _write_csv(rank_file, rows)  # progress survives a crash of this rank
            if on_pair is not None:
                on_pair(row)
            if bar is not None:
                bar.update(task, advance=1, last=f"{q.id}: {row['status']}{' (done before)' if row['resumed'] else ''}")
    finally:
        if bar is not None:
            bar.stop()

    if world > 1:
        if dist.is_initialized():
            dist.barrier()
        if rank == 0:
            rank_rows = {}
            for r in range(world):
                f = outp / f"summary.rank{r}.csv"
                rank_rows[r] = _read_csv(f) if f.is_file() else []
            rank_rows[0] = rows  # own rows as objects (exact floats)
            _merge(outp, pairs, rank_rows)
        if group is not None:
            dist.barrier()  # nobody leaves (and tears the group down) before rank 0 has merged
            dist.destroy_process_group()
    else:
        _merge(outp, pairs, {0: rows})
    return rows
