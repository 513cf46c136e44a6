"""The method itself: the SiLa heads and the ``sila_logits`` contract
(:mod:`~sila_keras.core.heads`), heads on a user's own model (:mod:`~sila_keras.core.attach`),
the SiLa and mutual losses (:mod:`~sila_keras.core.losses`), the per-head metrics
(:mod:`~sila_keras.core.metrics`) and a head's size and compression ratio
(:mod:`~sila_keras.core.sizes`, free of TensorFlow)."""
