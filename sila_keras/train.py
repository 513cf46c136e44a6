"""``python -m sila_keras.train`` (or ``sila-train``): the training command, defined in :mod:`sila_keras.training.train`."""

from sila_keras.training.train import main

if __name__ == "__main__":
    raise SystemExit(main())
