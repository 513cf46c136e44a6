"""Training modes (``--mode``): one registered :class:`Mode` per module.

* ``sila`` (default, :mod:`~sila_keras.modes.sila`): SilaNet — a backbone with M−1
  auxiliary heads (paper A).
* ``mutual`` / ``dml`` (:mod:`~sila_keras.modes.mutual`): two networks trained together
  (paper B Eq. 10, ``--dml``, ``--no-sila``) and the Deep Mutual Learning baseline.
* ``dynamic`` (:mod:`~sila_keras.modes.dynamic`): a multi-exit network (``msdnet``)
  whose exits are trained with SiLa (Eq. 11) or, with ``--no-sila``, per-exit CE.

To add a mode: write ``sila_keras/modes/<name>.py`` with a ``@register_mode`` subclass
of :class:`Mode`, and import it below (see ``docs/modes.md``). Importing this package
does not import TensorFlow.
"""

# Registration order = the order of the `--mode` choices.
# isort: off
from sila_keras.modes import sila  # noqa: F401
from sila_keras.modes import mutual  # noqa: F401
from sila_keras.modes import dynamic  # noqa: F401
# isort: on
from sila_keras.modes.base import (
    Mode,
    get_mode,
    list_modes,
    make_mode,
    method_label,
    register_mode,
)

__all__ = ["Mode", "get_mode", "list_modes", "make_mode", "method_label", "register_mode"]
