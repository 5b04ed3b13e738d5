"""Pictures and HTML reports of registrations: :func:`render_qc_png`, :func:`build_report`, :func:`build_index`."""

__all__ = ["render_qc_png", "build_report", "build_index"]


def __getattr__(name):  # lazy: matplotlib / PIL load only when a report is made
    if name == "render_qc_png":
        from .qc import render_qc_png

        return render_qc_png
    if name in ("build_report", "build_index"):
        from . import html

        return getattr(html, name)
    raise AttributeError(name)
