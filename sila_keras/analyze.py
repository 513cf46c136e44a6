"""``python -m sila_keras.analyze`` (or ``sila-analyze``): weight-noise analysis, defined in :mod:`sila_keras.reports.analyze`."""

from sila_keras.reports.analyze import main

if __name__ == "__main__":
    raise SystemExit(main())
