"""After training: run tables and plots (:mod:`~sila_keras.reports.report`,
:mod:`~sila_keras.reports.study`), weight-noise analysis (:mod:`~sila_keras.reports.analyze`)
and the parameter table (:mod:`~sila_keras.reports.params`)."""
