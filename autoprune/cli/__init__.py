"""The ``autoprune`` command: a thin layer over the library that prints and exits.

A known error (:class:`AutoPruneError`, a bad flag) is one line on stderr and exit code 2;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from typing import Sequence

from autoprune import __version__
from autoprune.cli import _compress, _search, _surrogate, _train
from autoprune.cli._common import EXIT_USAGE, Parser
from autoprune.errors import AutoPruneError


def build_parser() -> Parser:
    parser = Parser(
        prog="autoprune",
        description="Search for smaller, faster CNNs: L1 filter pruning, magnitude pruning, "
        "trained weight sharing and Huffman coding, tuned by Optuna.",
    )
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in (_train, _compress, _search, _surrogate):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        warnings.filterwarnings("ignore", module="torch_pruning")
    try:
        result = args.run(args)
    except AutoPruneError as e:
        print(f"autoprune {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_USAGE)
    except OSError as e:  # a path given cannot be read or written: permissions, a missing folder, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"autoprune {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"autoprune {args.command}: interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        print(args.format(result))
    return 0
