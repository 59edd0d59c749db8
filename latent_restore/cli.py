"""The ``latent-restore`` console script. Each sub-command parses its arguments and calls library code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger("latent_restore")


def _convert(args: argparse.Namespace) -> int:
    from latent_restore.convert import ConversionError, convert_official

    try:
        written = convert_official(args.official, args.out)
    except ConversionError as exc:
        logger.error("%s", exc)
        return 2
    for component, path in written.items():
        logger.info("wrote %s -> %s", component.value, path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latent-restore", description="Bring old photos back to life.")
    parser.add_argument("--quiet", action="store_true", help="only print warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert the officially released checkpoints into a weights directory",
        description="Convert a tree laid out like the unzipped official archives (Global/checkpoints/..., "
        "Face_Enhancement/checkpoints/...) into a latent-restore weights directory.",
    )
    convert.add_argument("--official", required=True, help="folder holding the unzipped official checkpoints")
    convert.add_argument("--out", required=True, help="weights directory to write")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
