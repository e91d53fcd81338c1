"""The command line every example shares: `--help`, `--quick`, `--out`.

Each example script in this folder starts with
`args = example_arguments(__doc__, configure)` (where `configure` adds the
script's own options) and ends with `done(args)`. Outputs (saved models,
tables, figures) go to `--out`, which defaults to a folder outside the
repository: `$KERAS_GR_CACHE/examples/<script name>` or
`~/.cache/keras_gr/examples/<script name>`. An example never writes into
the repository.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable

_START = time.time()


def default_output_folder(name: str) -> str:
    """`$KERAS_GR_CACHE/examples/<name>`, or under `~/.cache/keras_gr`."""
    root = os.environ.get("KERAS_GR_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_gr"
    )
    return os.path.join(root, "examples", name)


def example_arguments(
    doc: str,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    quick_help: str = "a short run (about 2 minutes on 2 CPU cores)",
) -> argparse.Namespace:
    """Parses the command line of the calling example script.

    `doc` (the script's docstring) is the `--help` text. Adds `--quick`
    (`quick_help` says what it changes) and `--out`, then the script's own
    options through `configure(parser)`. `args.out` is an absolute folder,
    created here.
    """
    name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    parser = argparse.ArgumentParser(
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument(
        "--out",
        default=default_output_folder(name),
        help="folder for this example's outputs (default: %(default)s)",
    )
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    return args


def done(args: argparse.Namespace) -> None:
    """Prints where the outputs are and the run time."""
    print(f"\noutputs: {args.out}")
    print(f"wall time: {time.time() - _START:.0f} s")
