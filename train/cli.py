"""What the command-line entry points share: arguments built from a configuration dataclass,
and one-line errors instead of tracebacks for problems a user can fix."""
from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields

from vqvae.data import DataError
from vqvae.hub import ModelLoadError
from vqvae.training import NonFiniteLoss

# What a user can fix: bad data, bad settings, a model that does not load, a diverged loss.
USER_ERRORS = (DataError, ModelLoadError, ValueError, NonFiniteLoss, FileNotFoundError)


def fail(message: str):
    """Exit non-zero with a one-line reason (no stack trace)."""
    sys.exit(f"error: {message}")


def add_config_arguments(parser: argparse.ArgumentParser, config_class):
    """One option per field of ``config_class``: ``--field-name``, its type, default and help
    from the field. A bool that defaults to False is a ``--flag``; one that defaults to True is
    turned off by ``--no-flag``."""
    hints = typing.get_type_hints(config_class)
    for f in fields(config_class):
        kind = hints[f.name]
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        name = "--" + f.name.replace("_", "-")
        if kind is bool:
            if f.default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=f"turn off: {f.metadata.get('help', '')}")
            else:
                parser.add_argument(name, dest=f.name, action="store_true", help=f.metadata.get("help"))
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)  # X | None -> X
        required = f.default is MISSING
        parser.add_argument(name, dest=f.name, type=base, required=required,
                            default=None if required else f.default,
                            help=f.metadata.get("help", "") + ("" if required else f" (default: {f.default})"),
                            **extra)


def config_parser(config_class, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, config_class)
    return parser


def config_from(config_class, args: argparse.Namespace, **overrides):
    """The configuration from parsed arguments; a bad combination is a one-line error."""
    values = {f.name: getattr(args, f.name) for f in fields(config_class)}
    try:
        return config_class(**{**values, **overrides})
    except ValueError as error:
        fail(str(error))


def add_guidance_argument(parser: argparse.ArgumentParser):
    """--guidance, as every sampling entry point takes it (checked by ``vqvae.sampling``)."""
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="classifier-free guidance towards the slice position (1: none; the prior was trained "
                             "with the position dropped at random, so it also predicts without it)")


def add_search_arguments(parser: argparse.ArgumentParser):
    """--search-sweeps / --search-candidates / --search-stride (``vqvae/code_search.py``)."""
    parser.add_argument("--search-sweeps", type=int, default=0,
                        help="search the codes for SSIM, N sweeps (0: the encoder's nearest codes)")
    parser.add_argument("--search-candidates", type=int, default=8, help="codes tried per position")
    parser.add_argument("--search-stride", type=int, default=3, help="cells between positions tried at once")


def searched_codes(model, x, args):
    """Codes for slices ``x`` in [0, 1] as the search arguments ask (nearest when not searching)."""
    from vqvae.code_search import search_batch
    if args.search_sweeps <= 0:
        return model.encode(x)
    return search_batch(model, x, args.search_candidates, args.search_sweeps, args.search_stride)


def run_or_fail(function, *args, **kwargs):
    """Run a library call; a problem the user can fix ends the program with a one-line reason."""
    try:
        return function(*args, **kwargs)
    except USER_ERRORS as error:
        fail(str(error))


def train_from_command_line(config_class, trainer, description: str | None, argv=None) -> dict:
    """What every train/ trainer does: parse, build the configuration, train, report."""
    args = config_parser(config_class, description).parse_args(argv)
    config = config_from(config_class, args)
    final = run_or_fail(trainer, config)
    if final:
        print("final (validate): " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
    return final
