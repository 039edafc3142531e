"""``stagectl migrate-data FROM TO``: the data migration of :mod:`service.migrate`, run from here.

The code is the service package's, so the service image carries it into each stage's network, where
the managed databases accept connections (``python -m service.migrate``, on the partner host the
compose tool service ``migrate``); this module only registers the same command line with stagectl.
"""

from __future__ import annotations

import argparse
from typing import Any

from service import migrate

PROG = "stagectl migrate-data"


def add_commands(subparsers: Any) -> None:
    cmd = subparsers.add_parser("migrate-data", help="move prediction records to the next stage's store")
    migrate.add_arguments(cmd)
    cmd.set_defaults(func=_handler)


def _handler(args: argparse.Namespace) -> int:
    return migrate.execute(args, PROG)
