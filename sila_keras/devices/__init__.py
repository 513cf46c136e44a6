"""Where training runs: ``tf.distribute`` strategies and SyncBN
(:mod:`~sila_keras.devices.distribute`), multi-worker clusters
(:mod:`~sila_keras.devices.multiworker`) and per-replica XLA compilation
(:mod:`~sila_keras.devices.replica_jit`)."""
