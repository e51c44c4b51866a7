"""Command line: ``python -m benchmarks posterior [--quick | --full] [--device cpu] [--seed 0] [--steps dps=200]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _steps(text: str) -> tuple[str, int]:
    """Parse ``method=N`` for ``--steps``."""
    name, sep, value = text.partition("=")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not sep or n < 1:
        raise argparse.ArgumentTypeError(f"--steps takes METHOD=N with N >= 1, e.g. score_ald=100; got {text!r}")
    return name, n


def parser() -> argparse.ArgumentParser:
    """The ``benchmarks`` argument parser, one sub-command per benchmark."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Run an invdiff benchmark.")
    sub = p.add_subparsers(dest="benchmark", required=True)
    post = sub.add_parser("posterior", help="every sampler against the exact posterior of analytic priors")
    mode = post.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="256 samples (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="1000 samples")
    post.set_defaults(mode="quick")
    post.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    post.add_argument("--seed", type=int, default=0, help="seed of the problems and the samplers (default 0)")
    post.add_argument(
        "--steps", type=_steps, action="append", default=[], metavar="METHOD=N",
        help="run METHOD with N noise levels instead of its default (marked in the table); repeatable",
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` and run the chosen benchmark."""
    args = parser().parse_args(argv)
    if args.benchmark == "posterior":
        from . import posterior

        try:
            posterior.run(args.mode, device=args.device, seed=args.seed, steps=dict(args.steps))
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
