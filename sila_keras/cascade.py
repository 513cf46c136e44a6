"""``python -m sila_keras.cascade`` (or ``sila-cascade``): early-exit cascade of a run's heads, defined in :mod:`sila_keras.reports.cascade`."""

from sila_keras.reports.cascade import main

if __name__ == "__main__":
    raise SystemExit(main())
