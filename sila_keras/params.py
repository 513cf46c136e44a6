"""``python -m sila_keras.params`` (or ``sila-params``): the parameter table, defined in :mod:`sila_keras.reports.params`."""

from sila_keras.reports.params import main

if __name__ == "__main__":
    raise SystemExit(main())
