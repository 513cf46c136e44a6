"""``python -m tuning`` / ``sila-tune`` (see tuning/cli.py)."""

import sys


def main(argv=None) -> int:
    from tuning.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
