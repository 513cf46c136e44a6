"""Plumbing every other group uses: the error family (:mod:`~sila_keras.utils.errors`), crash-safe
file writes (:mod:`~sila_keras.utils.files`), the run-directory schema
(:mod:`~sila_keras.utils.rundir`), plots (:mod:`~sila_keras.utils.plots`) and the one command
runner (:mod:`~sila_keras.utils.cli`). Imports no other group of ``sila_keras``."""
