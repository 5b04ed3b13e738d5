"""The ``unireg`` command group: help that reads like a command line, and global options anywhere.

Typer's own rendering shows boolean flags as ``--no-affine <bool>`` (although ``--no-affine true``
is rejected) and required arguments as ``{fixed} {moving}``.  :class:`UniRegGroup` patches each
command when it is looked up: flags get no metavar, arguments are shown upper-case
(``FIXED MOVING``) in the usage line and the argument table.  It also hoists the global options
(``--threads N``, ``--debug``) given after the subcommand to the front, so
``unireg register --threads 2 ...`` works like ``unireg --threads 2 register ...``.
"""

from __future__ import annotations

import types

from typer.core import TyperArgument, TyperGroup, TyperOption

__all__ = ["UniRegGroup", "hoist_global_options", "GLOBAL_VALUE_OPTIONS", "GLOBAL_FLAGS"]

GLOBAL_VALUE_OPTIONS = ("--threads",)
GLOBAL_FLAGS = ("--debug",)


def hoist_global_options(args: list[str], command_names) -> list[str]:
    """Move global options that follow the subcommand to before it (``--threads 2`` / ``--threads=2``).

    Arguments after ``--`` are left alone.
    """
    args = list(args)
    try:
        i_cmd = next(i for i, a in enumerate(args) if a in command_names)
    except StopIteration:
        return args
    head, tail, moved = args[: i_cmd + 1], [], []
    rest = args[i_cmd + 1:]
    k = 0
    while k < len(rest):
        a = rest[k]
        if a == "--":
            tail.extend(rest[k:])
            break
        name = a.split("=", 1)[0]
        if name in GLOBAL_VALUE_OPTIONS:
            if "=" in a:
                moved.append(a)
                k += 1
            else:
                moved.extend(rest[k:k + 2])
                k += 2
            continue
        if a in GLOBAL_FLAGS:
            moved.append(a)
            k += 1
            continue
        tail.append(a)
        k += 1
    return moved + head + tail


def _usage_pieces(self, ctx):
    pieces = [self.options_metavar] if self.options_metavar else []
    for p in self.get_params(ctx):
        if isinstance(p, TyperArgument):
            name = p.metavar or p.name.upper()
            pieces.append(name if p.required else f"[{name}]")
    return pieces


def _tidy(cmd) -> None:
    if getattr(cmd, "_unireg_tidy", False):
        return
    for p in cmd.params:
        if isinstance(p, TyperOption) and getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
        elif isinstance(p, TyperArgument) and p.metavar is None:
            p.metavar = p.name.upper()
    if hasattr(cmd, "collect_usage_pieces"):
        cmd.collect_usage_pieces = types.MethodType(_usage_pieces, cmd)
    get_help_option = cmd.get_help_option

    def help_option(ctx, _orig=get_help_option):
        opt = _orig(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = help_option
    cmd._unireg_tidy = True


class UniRegGroup(TyperGroup):
    """:class:`typer.core.TyperGroup` with tidy help and global options accepted after the subcommand."""

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _tidy(cmd)
        return cmd

    def get_help_option(self, ctx):
        opt = super().get_help_option(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, hoist_global_options(args, set(self.commands)))

    def format_help(self, ctx, formatter):
        for p in self.params:
            if isinstance(p, TyperOption) and getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return super().format_help(ctx, formatter)
