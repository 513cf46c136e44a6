"""``python -m export`` / ``sila-export`` (see export/cli.py)."""

import sys


def main(argv=None) -> int:
    from export.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
