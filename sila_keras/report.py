"""``python -m sila_keras.report`` (or ``sila-report``): run tables, defined in :mod:`sila_keras.reports.report`."""

from sila_keras.reports.report import main

if __name__ == "__main__":
    raise SystemExit(main())
