"""One training run: the configuration (:mod:`~sila_keras.training.config`, its groups in
:mod:`~sila_keras.training.config_groups`), its flags
(:mod:`~sila_keras.training.flags`) and named recipes (:mod:`~sila_keras.training.recipes`),
the optimizer and schedule (:mod:`~sila_keras.training.optim`), fine-tuning
(:mod:`~sila_keras.training.finetune`), callbacks, mixed precision and the training chain
itself (:mod:`~sila_keras.training.train`)."""
