"""Checkpoints of the barrel-cortex RSNN: convert a network into this project's format, or
check that a file is intact.

    python checkpoint.py convert SRC OUT [--data-dir DIR] [--overwrite]
    python checkpoint.py check FILE

The format (a ``state_dict`` plus configuration, sparse, read with ``weights_only=True``) and
its readers live in :mod:`rsnn_bfd.io.checkpoint`; their names stay importable from here
(``from checkpoint import load_checkpoint``).
"""
from __future__ import annotations

import argparse
import sys

from rsnn_bfd.cli import ArgumentParser, run_cli  # ArgumentParser: usage errors as one line
from rsnn_bfd.io.checkpoint import (CheckpointError, check_checkpoint,  # noqa: F401
                                    convert_network, load_checkpoint, read_checkpoint,
                                    save_checkpoint)

CONVERT_USAGE = """\
python checkpoint.py convert SRC OUT [--data-dir DIR] [--overwrite] | check FILE

convert: write the network of SRC as a weights-only checkpoint of this project (state_dict and
configuration, sparse, loadable with torch.load(..., weights_only=True)). SRC is a network
saved by the published scripts (torch.save(model), e.g. data/RSNN_bfd_0.03b_0.05w.pth; read
without running code) or a checkpoint of this project (its optimiser state is dropped).
OUT records SRC and its sha256; --data-dir records the dataset the network was trained on
when SRC does not.

check: read FILE as every command reads it (its digest, the network's invariants) and say
whether it is intact; a damaged file is one error line and exit code 2."""


def main(argv=None) -> int:
    parser = ArgumentParser(prog="checkpoint.py", usage=CONVERT_USAGE.splitlines()[0],
                            description=CONVERT_USAGE.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("convert", "check"))
    parser.add_argument("src", help="published network or checkpoint")
    parser.add_argument("out", nargs="?", help="the weights-only checkpoint to write (convert)")
    parser.add_argument("--data-dir", default=None,
                        help="the dataset it was trained on, recorded when SRC does not say")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    if args.command == "check":
        if args.out is not None or args.data_dir or args.overwrite:
            parser.error("check takes one FILE and no other argument")
        print(check_checkpoint(args.src))
        return 0
    if args.out is None:
        parser.error("convert needs SRC and OUT")
    convert_network(args.src, args.out, args.data_dir, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
