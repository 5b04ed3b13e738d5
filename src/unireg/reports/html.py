"""Self-contained HTML reports: one registration (``report.html``) and a batch (``index.html``).

Every picture is a PNG embedded as a base64 ``data:`` URI, CSS and JavaScript are inline, and
nothing refers to the network or to other files, except the batch index's relative links to each
pair's ``report.html``.  Pictures follow the display convention of :mod:`unireg.reports.qc`
(radiological LPS views, physical aspect).

Stable hooks for tests and scripts: ``#summary``, ``#qc-badge``, ``#flicker`` (with
``#flicker-toggle``, ``#flicker-auto``, ``#flicker-state``; class ``show-after`` on ``#flicker``
while the warped image is shown), ``#panels`` holding ``.panel`` elements (``data-kind`` one of
``fixed-edges``, ``warped-edges``, ``checkerboard``, ``grid``, ``jacobian``; ``data-plane`` the
plane name; ids ``panel-<kind>-<plane>``), ``#dice`` / ``#dice-table``, ``#metrics`` /
``#metrics-table`` (one ``tr`` per figure, ``data-key`` its dotted key), ``#warnings``.  Opening
the page with ``?selftest=1`` runs a check of images and controls and writes ``pass``/``fail`` into
``#selftest[data-status]``; ``#selftest[data-errors]`` counts script errors caught on the page.
The index has ``#index-table`` (sortable; ``?sort=<data-key>&order=asc|desc`` sorts on load, and
``#index-table[data-sorted]`` says how it is sorted).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from PIL import Image as PILImage
from scipy import ndimage

from unireg.errors import UniRegError
from unireg.io.atomic import atomic_path
from unireg.io.image import read_image
from unireg.io.warp import read_displacement_field
from unireg.report_schema import read_report
from unireg.reports.qc import (
    FOLD_COLOR,
    Plane,
    before_image,
    checkerboard,
    grid_line_positions,
    normalize,
    planes_for,
    robust_range,
)
from unireg.spatial.frames import disp_world_to_vox
from unireg.spatial.jacobian import jacobian_determinant

__all__ = ["build_report", "build_index", "edge_map", "png_data_uri"]

_EDGE_FIXED = (0, 229, 255)  # cyan: edges of the fixed image
_EDGE_WARPED = (255, 64, 64)  # red: edges of the warped image
_GRID = (255, 176, 0)
_JAC_RANGE = (0.0, 1.0, 2.0)  # vmin, centre, vmax of the det J map


# ------------------------------------------------------------------------------------ pictures
def png_data_uri(rgb: np.ndarray) -> str:
    """``(H, W)`` or ``(H, W, 3)`` uint8 -> ``data:image/png;base64,...``."""
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def edge_map(img: np.ndarray, sigma: float = 1.0, high: float = 0.2, low: float = 0.08) -> np.ndarray:
    """Canny-style edges of a 2-D image in [0, 1]: Gaussian, Sobel, non-maximum suppression, hysteresis.

    ``high``/``low`` are fractions of the 99th percentile of the gradient magnitude.
    """
    g = ndimage.gaussian_filter(np.asarray(img, dtype=np.float32), sigma)
    gr, gc = ndimage.sobel(g, 0), ndimage.sobel(g, 1)
    mag = np.hypot(gr, gc)
    ref = float(np.percentile(mag, 99))
    if ref <= 0:
        return np.zeros(mag.shape, dtype=bool)
    q = np.round(np.mod(np.arctan2(gr, gc), np.pi) / (np.pi / 4)).astype(int) % 4
    p = np.pad(mag, 1)
    h, w = mag.shape

    def nb(dr: int, dc: int) -> np.ndarray:
        return p[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]

    keep = np.zeros(mag.shape, dtype=bool)
    for k, (dr, dc) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        sel = q == k
        keep |= sel & (mag >= nb(dr, dc)) & (mag >= nb(-dr, -dc))
    weak = keep & (mag > low * ref)
    lab, n = ndimage.label(weak, structure=np.ones((3, 3)))
    if n == 0:
        return weak
    strong = np.zeros(n + 1, dtype=bool)
    strong[np.unique(lab[keep & (mag > high * ref)])] = True
    strong[0] = False
    return strong[lab]


def _gray(x01: np.ndarray) -> np.ndarray:
    g = (np.clip(x01, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _overlay(rgb: np.ndarray, mask: np.ndarray, color) -> np.ndarray:
    out = rgb.copy()
    out[mask] = color
    return out


def _jacobian_rgb(j: np.ndarray) -> np.ndarray:
    vmin, vc, vmax = _JAC_RANGE
    rgba = colormaps["RdBu_r"](TwoSlopeNorm(vmin=vmin, vcenter=vc, vmax=vmax)(j))
    rgb = (rgba[..., :3] * 255 + 0.5).astype(np.uint8)
    rgb[j <= 0] = FOLD_COLOR
    return rgb


def _jacobian_gradient_css() -> str:
    cm = colormaps["RdBu_r"]
    stops = []
    for t in np.linspace(0, 1, 9):
        r, g, b, _ = cm(float(t))
        stops.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x} {t * 100:.0f}%")
    return "linear-gradient(to right, " + ", ".join(stops) + ")"


def _grid_mask(d_down: np.ndarray, d_right: np.ndarray, n_lines: int = 16, oversample: int = 4) -> np.ndarray:
    """Rasterize a square grid (on square display pixels) moved by ``(d_down, d_right)`` pixels."""
    h, w = d_down.shape
    rows, cols = grid_line_positions(h, w, (1.0, 1.0), n_lines)
    mask = np.zeros((h, w), dtype=bool)

    def draw(y: np.ndarray, x: np.ndarray) -> None:
        yi, xi = np.rint(y).astype(int), np.rint(x).astype(int)
        ok = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        mask[yi[ok], xi[ok]] = True

    cs = np.linspace(0, w - 1, (w - 1) * oversample + 1)
    for r in rows:
        draw(r + np.interp(cs, np.arange(w), d_down[r]), cs + np.interp(cs, np.arange(w), d_right[r]))
    rs = np.linspace(0, h - 1, (h - 1) * oversample + 1)
    for c in cols:
        draw(rs + np.interp(rs, np.arange(h), d_down[:, c]), c + np.interp(rs, np.arange(h), d_right[:, c]))
    return mask


def _display_shape(plane: Plane, shape: Sequence[int], spacing: Sequence[float], max_px: int) -> tuple[int, int]:
    h_mm = shape[plane.row_axis] * spacing[plane.row_axis]
    w_mm = shape[plane.col_axis] * spacing[plane.col_axis]
    scale = max_px / max(h_mm, w_mm)
    return max(int(round(h_mm * scale)), 2), max(int(round(w_mm * scale)), 2)


def _sample(vol: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    return ndimage.map_coordinates(vol, coords, order=order, mode="constant", cval=0.0, prefilter=False)


def _first_channel_mean(img) -> np.ndarray:
    d = np.asarray(img.data, dtype=np.float32)
    return d.mean(axis=0) if d.shape[0] > 1 else d[0]


# ------------------------------------------------------------------------------------ report
def _resolve(p: str | None, base: Path) -> Path | None:
    if not p:
        return None
    q = Path(p)
    if not q.is_absolute() and not q.exists():
        q = base / q
    return q


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "—" if v is None else ("yes" if v else "no")
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


_CSS = """
:root{--bg:#111;--fg:#e8e8e8;--mut:#9a9a9a;--acc:#ffb000;--card:#1c1c1c;--bad:#ff4d4d;--good:#3ecf6e}
*{box-sizing:border-box}
body{margin:0;padding:16px 20px;background:var(--bg);color:var(--fg);
 font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
h1{font-size:20px;margin:0 0 6px} h2{font-size:16px;margin:22px 0 8px;color:var(--acc)}
.mut{color:var(--mut)} code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
#qc-badge{display:inline-block;padding:3px 10px;border-radius:12px;font-weight:600;margin:4px 0}
#qc-badge.flagged{background:var(--bad);color:#000} #qc-badge.ok{background:var(--good);color:#000}
#qc-badge.unknown{background:#444}
.plane-row{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:14px;align-items:flex-start}
.panel{background:var(--card);border-radius:6px;padding:6px;margin:0}
.panel img{display:block;image-rendering:pixelated;max-width:100%}
.panel figcaption{font-size:12px;color:var(--mut);margin-top:4px;max-width:260px}
.flicker-box{position:relative}
.flicker-box img.after{display:none}
#flicker.show-after .flicker-box img.before{display:none}
#flicker.show-after .flicker-box img.after{display:block}
button{background:#333;color:var(--fg);border:1px solid #555;border-radius:4px;padding:4px 10px;cursor:pointer;font:inherit}
button[aria-pressed=true]{border-color:var(--acc);color:var(--acc)}
#flicker-state{font-weight:600;margin-left:8px}
table{border-collapse:collapse;margin:4px 0 10px}
th,td{border-bottom:1px solid #333;padding:3px 10px;text-align:left;vertical-align:top}
th{color:var(--mut);font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.flag td{color:var(--bad)}
.legend{display:inline-flex;align-items:center;gap:6px;font-size:12px;color:var(--mut)}
.legend .bar{display:inline-block;width:140px;height:10px;border-radius:2px}
.legend .fold{display:inline-block;width:12px;height:10px}
#warnings li{color:var(--acc)}
#selftest{display:none}
"""

_ERROR_TRAP = """<script>
window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push(String(e.message||e));});
</script>"""

_REPORT_JS = """<script>
(function(){
  var root=document.getElementById('flicker');
  if(!root){return;}
  var toggleBtn=document.getElementById('flicker-toggle');
  var autoBtn=document.getElementById('flicker-auto');
  var state=document.getElementById('flicker-state');
  var timer=null;
  function show(after){
    if(after){root.classList.add('show-after');}else{root.classList.remove('show-after');}
    state.textContent=after?'after: warped':'before: moving (world coordinates only)';
  }
  function toggle(){show(!root.classList.contains('show-after'));}
  function setAuto(on){
    if(timer!==null){clearInterval(timer);timer=null;}
    if(on){timer=setInterval(toggle,700);}
    autoBtn.setAttribute('aria-pressed',on?'true':'false');
    autoBtn.textContent=on?'Stop flicker':'Auto flicker';
  }
  toggleBtn.addEventListener('click',function(){setAuto(false);toggle();});
  autoBtn.addEventListener('click',function(){setAuto(timer===null);});
  show(false);
  setAuto(true);
  window.__unireg={toggle:toggle,setAuto:setAuto,show:show};
})();
</script>"""

_SELFTEST_JS = """<script>
window.addEventListener('load',function(){
  var out=document.getElementById('selftest');
  out.setAttribute('data-errors',String(window.__errors.length));
  if(location.search.indexOf('selftest')<0){return;}
  var problems=[];
  var imgs=document.getElementsByTagName('img');
  for(var i=0;i<imgs.length;i++){
    if(!imgs[i].complete||!imgs[i].naturalWidth){problems.push('image '+i+' not decoded');}
  }
  var root=document.getElementById('flicker');
  if(root&&window.__unireg){
    window.__unireg.setAuto(false);
    var before=root.classList.contains('show-after');
    document.getElementById('flicker-toggle').click();
    if(root.classList.contains('show-after')===before){problems.push('flicker toggle did nothing');}
    document.getElementById('flicker-toggle').click();
    if(root.classList.contains('show-after')!==before){problems.push('flicker toggle not reversible');}
    document.getElementById('flicker-auto').click();
    if(document.getElementById('flicker-auto').getAttribute('aria-pressed')!=='true'){problems.push('auto flicker did not start');}
  }
  if(window.__errors.length){problems=problems.concat(window.__errors);}
  out.setAttribute('data-images',String(imgs.length));
  out.setAttribute('data-status',problems.length?'fail':'pass');
  out.textContent=problems.join('; ');
});
</script>"""


def _figure(kind: str, plane: str, uri: str, caption: str, size: tuple[int, int]) -> str:
    h, w = size
    return (
        f'<figure class="panel" id="panel-{kind}-{plane}" data-kind="{kind}" data-plane="{plane}">'
        f'<img src="{uri}" width="{w}" height="{h}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def build_report(out_dir: str | os.PathLike, *, max_px: int = 256, preloaded: dict | None = None) -> Path:
    """Write ``out_dir/report.html``, a self-contained visual report of one registration.

    Reads ``report.json`` (``fixed`` and ``moving`` paths, figures), ``warped.nii.gz``,
    ``warp.nii.gz`` and ``jacobian.nii.gz`` (det J is recomputed from the warp if that file is
    missing) from ``out_dir``.  "Before" is the moving image resampled on the fixed grid through
    the two voxel-to-world affines only.  Missing optional inputs become notes in ``#warnings``.

    Parameters
    ----------
    out_dir : path-like
        A ``unireg register`` output directory.
    max_px : int
        Longer side, in pixels, of each embedded picture.
    preloaded : dict, optional
        In-memory objects that replace reading files (``unireg register`` passes what it just
        wrote, saving the re-read of the .nii.gz files, and images given as arrays have no path):
        ``fixed``/``moving``/``warped`` (:class:`Image`), ``warp`` (``(disp_mm_ras, affine)``),
        ``jacobian`` (array on the fixed grid), ``before`` (the moving image on the fixed grid,
        :func:`unireg.reports.qc.before_image`; computed from ``moving`` when absent).

    Returns
    -------
    Path
        ``out_dir/report.html`` (written atomically).

    Raises
    ------
    UniRegError
        ``report.json`` missing or invalid, fixed image unreadable, or outputs on another grid.
    """
    out = Path(out_dir)
    rj = out / "report.json"
    if not rj.is_file():
        raise UniRegError("no report.json in the output directory", out)
    report = read_report(rj)
    pre = dict(preloaded or {})
    if not (report.get("fixed") or pre.get("fixed") is not None):
        raise UniRegError("report.json has no 'fixed' image path", rj)

    warnings: list[str] = []
    if pre.get("fixed") is not None:
        fixed = pre["fixed"]
    else:
        fixed_path = _resolve(report["fixed"], out)
        assert fixed_path is not None  # checked above: report.json names the fixed image
        fixed = read_image(fixed_path)
    shape, faff = fixed.spatial_shape, fixed.affine
    spacing = [float(s) for s in fixed.spacing]
    fixed_vol = _first_channel_mean(fixed)

    written_raw = report.get("outputs")
    written: dict = written_raw if isinstance(written_raw, dict) else {}

    def optional(name: str, reader):
        key = {"warped.nii.gz": "warped", "warp.nii.gz": "warp"}.get(name)
        if key and pre.get(key) is not None:
            return pre[key]
        p = out / str(written.get(key) or name)  # images may be .mha/.nrrd (--format)
        if not p.is_file():
            warnings.append(f"{name} not found")
            return None
        return reader(p)

    def read_output(path):  # UniReg's own outputs may be constant (an affine-only det J is 1)
        return read_image(path, constant_ok=True)

    warped = optional("warped.nii.gz", read_output)
    warped_vol = None
    if warped is not None:
        if warped.spatial_shape != shape:
            raise UniRegError(f"warped image shape {warped.spatial_shape} differs from the fixed image's {shape}",
                              out / "warped.nii.gz")
        warped_vol = _first_channel_mean(warped)
    field = optional("warp.nii.gz", read_displacement_field)
    if field is not None:
        if field[0].shape[1:] != shape:
            raise UniRegError(f"warp grid {field[0].shape[1:]} differs from the fixed image's {shape}",
                              out / "warp.nii.gz")
        disp_world = field[0]
    jac_img = out / str(written.get("jacobian") or "jacobian.nii.gz")
    jac_vol = None
    if pre.get("jacobian") is not None:
        jac_vol = np.asarray(pre["jacobian"])
    elif jac_img.is_file():
        jac_vol = _first_channel_mean(read_output(jac_img))
    elif field is not None:
        dv_t = torch.from_numpy(disp_world_to_vox(disp_world, faff))[None]
        jac_vol = jacobian_determinant(dv_t)[0].numpy()
        warnings.append("jacobian.nii.gz not found; det J recomputed from warp.nii.gz")
    else:
        warnings.append("jacobian.nii.gz not found")
    moving = pre.get("moving")
    mpath = _resolve(report.get("moving"), out)
    if moving is not None:
        pass
    elif mpath is not None and mpath.is_file():
        moving = read_image(mpath)
    else:
        warnings.append(f"moving image not found ({report.get('moving')}); no before/after flicker")
    before_vol = None
    if pre.get("before") is not None:
        before_vol = np.asarray(pre["before"], dtype=np.float32)
    elif moving is not None:
        before_vol = before_image(moving.data, moving.affine, shape, faff)

    planes = planes_for(shape, faff)
    samples = []
    for p in planes:
        hw = _display_shape(p, shape, spacing, max_px)
        c = p.voxel_coords(shape, hw)
        s: dict[str, Any] = {"plane": p, "hw": hw, "fixed": _sample(fixed_vol, c)}
        if warped_vol is not None:
            s["warped"] = _sample(warped_vol, c)
        if before_vol is not None:
            s["before"] = _sample(before_vol, c)
        if field is not None:
            d_world = np.stack([_sample(comp, c) for comp in disp_world])
            dv = disp_world_to_vox(d_world, faff)
            # voxels -> display pixels along each displayed direction
            d_down, d_right = p.in_plane_disp(dv)
            h_in, w_in = shape[p.row_axis], shape[p.col_axis]
            s["d_down"] = d_down * (hw[0] - 1) / max(h_in - 1, 1)
            s["d_right"] = d_right * (hw[1] - 1) / max(w_in - 1, 1)
        if jac_vol is not None:
            s["jac"] = _sample(jac_vol.astype(np.float32), c, order=0)
        samples.append(s)
    win_f = robust_range(*[s["fixed"] for s in samples])
    mov = [s[k] for s in samples for k in ("warped", "before") if k in s]
    win_m = robust_range(*mov) if mov else win_f

    flicker_html, panel_rows = [], []
    for s in samples:
        p, hw, name = s["plane"], s["hw"], s["plane"].name
        f = normalize(s["fixed"], win_f)
        # smooth over about one source voxel, so interpolation kinks of upsampled planes are no edges
        zoom = max(hw[0] / shape[p.row_axis], hw[1] / shape[p.col_axis])
        sigma = max(1.0, 0.7 * zoom)
        e_f = edge_map(f, sigma)
        figs = []
        if "warped" in s:
            w = normalize(s["warped"], win_m)
            e_w = edge_map(w, sigma)
            figs.append(_figure("fixed-edges", name, png_data_uri(_overlay(_gray(f), e_w, _EDGE_WARPED)),
                                f"{name}: fixed, warped edges (red)", hw))
            figs.append(_figure("warped-edges", name, png_data_uri(_overlay(_gray(w), e_f, _EDGE_FIXED)),
                                f"{name}: warped, fixed edges (cyan)", hw))
            if "before" in s:
                b = normalize(s["before"], win_m)
                ub = png_data_uri(_overlay(_gray(b), e_f, _EDGE_FIXED))
                ua = png_data_uri(_overlay(_gray(w), e_f, _EDGE_FIXED))
                h_, w_ = hw
                flicker_html.append(
                    f'<figure class="panel flicker-box" id="flicker-{name}" data-plane="{name}">'
                    f'<img class="before" src="{ub}" width="{w_}" height="{h_}" alt="{name}: moving before">'
                    f'<img class="after" src="{ua}" width="{w_}" height="{h_}" alt="{name}: warped">'
                    f"<figcaption>{name}: fixed edges (cyan)</figcaption></figure>"
                )
            px_mm = (shape[p.row_axis] * spacing[p.row_axis]) / hw[0]
            cb = checkerboard(f, w, (px_mm, px_mm))
            figs.append(_figure("checkerboard", name, png_data_uri(_gray(cb)), f"{name}: checkerboard fixed / warped", hw))
        if "d_down" in s:
            g = _overlay(_gray(f * 0.6), _grid_mask(s["d_down"], s["d_right"]), _GRID)
            figs.append(_figure("grid", name, png_data_uri(g), f"{name}: deformation grid over fixed", hw))
        if "jac" in s:
            j = s["jac"]
            nf = int((j <= 0).sum())
            figs.append(_figure("jacobian", name, png_data_uri(_jacobian_rgb(j)),
                                f"{name}: det J ({nf} folded pixels in this plane)", hw))
        panel_rows.append(f'<div class="plane-row" data-plane="{name}">' + "".join(figs) + "</div>")

    esc = html.escape
    title = f"UniReg report: {Path(str(report.get('moving', ''))).name} → {Path(str(report['fixed'])).name}"
    qc_flag, qc_score = report.get("qc_flag"), report.get("qc_score")
    if qc_flag is None and qc_score is None:
        badge = '<span id="qc-badge" class="unknown">no failure score</span>'
    else:
        cls = "flagged" if qc_flag else "ok"
        txt = "FLAGGED" if qc_flag else "passed QC"
        if qc_score is not None:
            txt += f" · failure score {_fmt(qc_score)}"
            thr = report.get("qc_threshold")
            if not qc_flag and isinstance(thr, (int, float)) and qc_score >= thr:  # qc_score.intensities_vouch
                txt += " (the intensities' NMI vouches for the alignment)"
        badge = f'<span id="qc-badge" class="{cls}">{esc(txt)}</span>'
    summary_bits = [
        f"<div>fixed: <code>{esc(str(report.get('fixed')))}</code></div>",
        f"<div>moving: <code>{esc(str(report.get('moving')))}</code></div>",
    ]
    for k in ("folded_percent", "sdlogj"):
        if k in report:
            summary_bits.append(f"<div>{k}: <b>{esc(_fmt(report[k]))}</b></div>")
    if isinstance(report.get("dice"), dict) and "mean" in report["dice"]:
        db = report.get("dice_before") or {}
        before_txt = f" (before {_fmt(db['mean'])})" if isinstance(db, dict) and "mean" in db else ""
        summary_bits.append(f"<div>mean Dice: <b>{esc(_fmt(report['dice']['mean']))}</b>{esc(before_txt)}</div>")
    rt = report.get("runtime_s")
    if isinstance(rt, dict) and "total" in rt:
        summary_bits.append(f"<div>total time: <b>{esc(_fmt(rt['total']))} s</b></div>")

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        _ERROR_TRAP,
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<section id="summary">{badge}{"".join(summary_bits)}</section>',
    ]
    if warnings:
        parts.append('<ul id="warnings">' + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")
    if flicker_html:
        parts += [
            '<h2>Before / after</h2><section id="flicker">',
            '<div class="controls"><button id="flicker-toggle" type="button">Toggle before / after</button> '
            '<button id="flicker-auto" type="button" aria-pressed="false">Auto flicker</button>'
            '<span id="flicker-state"></span></div>',
            '<div class="plane-row">' + "".join(flicker_html) + "</div>",
            "</section>",
        ]
    legend = (
        f'<div class="legend">det J: 0 <span class="bar" style="background:{_jacobian_gradient_css()}"></span> 2'
        f' &nbsp; folded (det J ≤ 0) <span class="fold" style="background:rgb{FOLD_COLOR}"></span></div>'
    )
    parts += ['<h2>Overlays, checkerboard, deformation, det J</h2><section id="panels">', legend,
              *panel_rows, "</section>"]

    dice = report.get("dice")
    if isinstance(dice, dict) and dice:
        before = report.get("dice_before") if isinstance(report.get("dice_before"), dict) else None
        head = "<tr><th>label</th>" + ("<th>before</th>" if before else "") + "<th>after</th>" + \
               ("<th>change</th>" if before else "") + "</tr>"
        keys = [k for k in dice if str(k) != "mean"] + (["mean"] if "mean" in dice else [])
        body = []
        for k in keys:
            a = dice[k]
            cells = f'<td>{esc(str(k))}</td>'
            if before:
                bv = before.get(k, before.get(str(k)))
                cells += f'<td class="num">{esc(_fmt(bv))}</td>'
            cells += f'<td class="num">{esc(_fmt(a))}</td>'
            if before:
                ch = (a - bv) if isinstance(a, (int, float)) and isinstance(bv, (int, float)) else None
                cells += f'<td class="num">{esc(_fmt(ch if ch is None else float(ch)))}</td>'
            body.append(f'<tr data-label="{esc(str(k))}">{cells}</tr>')
        parts.append(f'<h2>Dice</h2><section id="dice"><table id="dice-table">{head}{"".join(body)}</table></section>')

    rows = []
    for key, v in _flatten(report):
        cls = ' class="flag"' if key == "qc_flag" and v else ""
        rows.append(f'<tr data-key="{esc(key)}"{cls}><th>{esc(key)}</th><td>{esc(_fmt(v))}</td></tr>')
    parts.append(f'<h2>Figures (report.json)</h2><section id="metrics"><table id="metrics-table">{"".join(rows)}</table></section>')
    parts += ['<div id="selftest" data-status="not-run"></div>', _REPORT_JS, _SELFTEST_JS, "</body></html>"]

    dest = out / "report.html"
    with atomic_path(dest) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return dest


# ------------------------------------------------------------------------------------ batch index
def _thumbnail(pair_dir: Path, row: dict, max_px: int = 96) -> str | None:
    """An embedded thumbnail: the row's ``thumbnail`` PNG if given, else the warped image's mid-plane."""
    try:
        thumb = row.get("thumbnail")
        if thumb:
            thumb_path = _resolve(str(thumb), pair_dir)
            assert thumb_path is not None  # str(thumb) is not empty
            with PILImage.open(thumb_path) as im:
                rgb = im.convert("RGB")
                rgb.thumbnail((max_px, max_px))
                return png_data_uri(np.asarray(rgb))
        p = pair_dir / "warped.nii.gz"
        if not p.is_file():
            return None
        img = read_image(p, constant_ok=True)
        vol = _first_channel_mean(img)
        plane = planes_for(img.spatial_shape, img.affine)[-1]  # axial (3-D) or the plane (2-D)
        hw = _display_shape(plane, img.spatial_shape, [float(s) for s in img.spacing], max_px)
        sl = _sample(vol, plane.voxel_coords(img.spatial_shape, hw))
        return png_data_uri(_gray(normalize(sl, robust_range(sl))))
    except (OSError, ValueError, UniRegError):
        return None


def _num(v) -> float | None:
    if isinstance(v, dict):
        v = v.get("total", v.get("mean"))
    if isinstance(v, bool) or v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _badness(row: dict) -> float:
    """Sort key, larger is worse: failed pairs first, then by failure score; unknown scores last."""
    if row.get("status") == "failed":
        return math.inf
    s = _num(row.get("qc_score"))
    return -math.inf if s is None else s


_INDEX_JS = """<script>
(function(){
  var table=document.getElementById('index-table');
  var tbody=table.tBodies[0];
  var ths=table.tHead.rows[0].cells;
  function val(td,type){
    var v=td.getAttribute('data-sort');
    if(type==='num'){var x=parseFloat(v);return isNaN(x)?null:x;}
    return v===null?'':v;
  }
  function sortBy(col,dir){
    var type=ths[col].getAttribute('data-type');
    var rows=Array.prototype.slice.call(tbody.rows);
    rows.sort(function(a,b){
      var x=val(a.cells[col],type),y=val(b.cells[col],type);
      if(x===null&&y===null){return 0;}
      if(x===null){return 1;}
      if(y===null){return -1;}
      if(x===y){return 0;}
      var c=(type==='num')?(x<y?-1:1):String(x).localeCompare(String(y),undefined,{numeric:true});
      return c*dir;
    });
    for(var i=0;i<rows.length;i++){tbody.appendChild(rows[i]);}
    for(var k=0;k<ths.length;k++){ths[k].removeAttribute('aria-sort');}
    ths[col].setAttribute('aria-sort',dir>0?'ascending':'descending');
    table.setAttribute('data-sorted',ths[col].getAttribute('data-key')+':'+(dir>0?'asc':'desc'));
  }
  function findCol(key){for(var i=0;i<ths.length;i++){if(ths[i].getAttribute('data-key')===key){return i;}}return -1;}
  Array.prototype.forEach.call(ths,function(th,i){
    th.addEventListener('click',function(){
      var cur=th.getAttribute('aria-sort');
      var dir=cur==='descending'?1:(cur==='ascending'?-1:(th.getAttribute('data-type')==='num'?-1:1));
      sortBy(i,dir);
    });
  });
  var q={};
  location.search.replace(/^\\?/,'').split('&').forEach(function(kv){
    if(!kv){return;} var p=kv.split('='); q[decodeURIComponent(p[0])]=decodeURIComponent(p[1]||'');
  });
  var col=findCol(q.sort||'score');
  if(col<0){col=findCol('score');}
  sortBy(col,q.order==='asc'?1:-1);
  window.__uniregSort=sortBy;
})();
</script>"""


def build_index(batch_dir: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """Write ``batch_dir/index.html``: one sortable table row per registered pair, worst first.

    Parameters
    ----------
    batch_dir : path-like
        The batch output directory; each pair's results live in ``batch_dir/<row["dir"]>``.
    rows : sequence of dict
        Keys ``id``, ``dir`` (relative path), ``dice`` (mean Dice or None), ``folded_percent``,
        ``runtime_s`` (seconds, or a dict with ``total``), ``qc_score`` (failure score or None),
        ``qc_flag`` (bool or None), ``status`` (``"ok"``/``"failed"``), ``error`` (str or None);
        optional ``thumbnail`` (path of a PNG, relative to the pair directory).

    Returns
    -------
    Path
        ``batch_dir/index.html`` (written atomically).  Rows start sorted by failure score, highest
        first, failed pairs on top and unscored pairs last; clicking a header sorts by that column.
    """

    bd = Path(batch_dir)
    esc = html.escape
    ordered = sorted(rows, key=_badness, reverse=True)
    cols = [("id", "str", "id"), ("preview", "str", "preview"), ("dice", "num", "Dice"),
            ("folded", "num", "folded %"), ("time", "num", "time (s)"), ("score", "num", "failure score"),
            ("status", "str", "status"), ("report", "str", "report")]
    head = "".join(f'<th data-key="{k}" data-type="{t}" title="sort by {esc(lbl)}">{esc(lbl)}</th>' for k, t, lbl in cols)
    body = []
    n_failed = n_flagged = 0
    for r in ordered:
        rid = str(r.get("id", ""))
        rdir = str(r.get("dir") or rid)
        failed = r.get("status") == "failed"
        n_failed += failed
        n_flagged += bool(r.get("qc_flag"))
        thumb = None if failed else _thumbnail(bd / rdir, r)
        dice, fold, t, score = (_num(r.get(k)) for k in ("dice", "folded_percent", "runtime_s", "qc_score"))
        bad = _badness(r)
        score_sort = "Infinity" if bad == math.inf else ("" if score is None else repr(score))

        def num_td(x: float | None, sort: str | None = None) -> str:
            s = ("" if x is None else repr(x)) if sort is None else sort
            return f'<td class="num" data-sort="{esc(s)}">{esc(_fmt(x))}</td>'

        status = "failed" if failed else ("flagged" if r.get("qc_flag") else "ok")
        err = f'<div class="error">{esc(str(r.get("error")))}</div>' if r.get("error") else ""
        href = "/".join(quote(part) for part in Path(rdir).parts) + "/report.html"
        link = "" if failed and not (bd / rdir / "report.html").is_file() else f'<a href="{esc(href)}">report</a>'
        cells = [
            f'<td data-sort="{esc(rid)}">{esc(rid)}</td>',
            f'<td data-sort="{esc(rid)}">' + (f'<img class="thumb" src="{thumb}" alt="{esc(rid)}">' if thumb else "—") + "</td>",
            num_td(dice),
            num_td(fold),
            num_td(t),
            num_td(score, score_sort),
            f'<td data-sort="{status}" class="status {status}">{status}{err}</td>',
            f'<td data-sort="{esc(rdir)}">{link}</td>',
        ]
        body.append(f'<tr class="pair {status}" data-id="{esc(rid)}">{"".join(cells)}</tr>')

    css = _CSS + """
th{cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"} th[aria-sort=descending]::after{content:" \\25BC"}
img.thumb{display:block;max-width:96px;max-height:96px;image-rendering:auto}
tr.failed td.status,.error{color:var(--bad)} tr.flagged td.status{color:var(--acc)}
.error{font-size:12px;max-width:420px;white-space:pre-wrap}
a{color:var(--acc)}
"""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>UniReg batch report</title>",
        f"<style>{css}</style>",
        _ERROR_TRAP,
        "</head><body>",
        "<h1>UniReg batch report</h1>",
        f'<p id="batch-summary" class="mut">{len(ordered)} pairs · {n_failed} failed · {n_flagged} flagged. '
        "Click a column header to sort; initially worst first.</p>",
        f'<table id="index-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>',
        '<div id="selftest" data-status="not-run"></div>',
        _INDEX_JS,
        """<script>window.addEventListener('load',function(){var o=document.getElementById('selftest');
o.setAttribute('data-errors',String(window.__errors.length));
o.setAttribute('data-status',window.__errors.length?'fail':'pass');o.textContent=window.__errors.join('; ');});</script>""",
        "</body></html>",
    ]
    bd.mkdir(parents=True, exist_ok=True)
    dest = bd / "index.html"
    with atomic_path(dest) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return dest
