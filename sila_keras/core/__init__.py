"""The method itself: the SiLa heads and the ``sila_logits`` contract
(:mod:`~sila_keras.core.heads`), the auxiliary head modules (:mod:`~sila_keras.core.head_modules`,
``--head-module``), heads on a user's own model (:mod:`~sila_keras.core.attach`),
the SiLa and mutual losses (:mod:`~sila_keras.core.losses`), the levers for heads 2..M
(:mod:`~sila_keras.core.levers`), the per-head metrics (:mod:`~sila_keras.core.metrics`) and a
head's size, compression ratio and MACs (:mod:`~sila_keras.core.sizes`, free of TensorFlow at
import)."""
