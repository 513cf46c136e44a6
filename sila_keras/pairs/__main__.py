"""``python -m sila_keras.pairs``: see :mod:`sila_keras.pairs.cli`."""

import sys

from sila_keras.pairs.cli import main

if __name__ == "__main__":
    sys.exit(main())
