"""The one runner behind every console script (train, tune, export, pairs, analyze, params, report).

A command is its parser and a ``run(args)`` function; :func:`run_command` does the rest, the
same way for all of them:

1. parse the arguments — ``--help`` and argument errors return here, before TensorFlow is
   imported (the parsers import nothing heavy);
2. prepare the process for TensorFlow: quiet start-up (no TF/absl/CUDA lines unless
   ``--verbose 2`` or ``--debug``) and oneDNN on for CPUs where TF leaves it off
   (:func:`onednn_decision`);
3. run, with SIGTERM turned into ``KeyboardInterrupt`` so a killed job stops like Ctrl-C;
4. map what was raised to an exit status and one message (:data:`EXIT_CODES`):

   ====================================  ====  =========================================
   raised                                exit  printed on stderr
   ====================================  ====  =========================================
   nothing                               0     (the command's own output)
   :class:`~sila_keras.utils.errors.SilaError`  2     ``prog: error: <message>``
   :class:`~sila_keras.utils.errors.RunFailed`  3     ``prog: failed: <message>``
   ``KeyboardInterrupt`` / SIGTERM       130   ``prog: interrupted. <resume hint>``
   anything else (a bug)                 1     the traceback
   ====================================  ====  =========================================

   ``--debug`` adds the traceback to the 2 and 3 lines.

Example:
    >>> import argparse
    >>> from sila_keras.utils.cli import Command, run_command
    >>> from sila_keras.utils.errors import ConfigError
    >>> def run(args):
    ...     raise ConfigError(f"`--n` must be >= 1. Received: n={args.n}")
    >>> def parser():
    ...     p = argparse.ArgumentParser(prog="demo")
    ...     p.add_argument("--n", type=int, default=0)
    ...     return p
    >>> run_command(Command("demo", parser, run, needs_tensorflow=False), [])  # one line on stderr
    2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from sila_keras.utils.errors import RunFailed, SilaError

EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130

# Exception type → (exit status, message label); the first matching row wins. Anything not
# listed is a bug: its traceback is shown and the exit status is EXIT_BUG.
EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (KeyboardInterrupt, EXIT_INTERRUPTED, "interrupted"),
    (SilaError, EXIT_BAD_INPUT, "error"),
    (RunFailed, EXIT_FAILED, "failed"),
)

# CPU flags with which TensorFlow turns oneDNN on by itself (tensorflow/core/util/util.cc).
ONEDNN_DEFAULT_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
                                  "amx_bf16", "amx_int8"})


@dataclass(frozen=True)
class Command:
    """A console script: its name, parser and work.

    Attributes:
        prog: the name in messages (``sila-train``).
        build_parser: returns the ``argparse`` parser; must not import TensorFlow.
        run: does the work with the parsed arguments; returns an exit status or None (0).
        interrupted_hint: what to say after ``interrupted.`` (how to resume, what is kept).
        needs_tensorflow: prepare TensorFlow's start-up (quiet, oneDNN) before ``run``.
    """

    prog: str
    build_parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int | None]
    interrupted_hint: str = ""
    needs_tensorflow: bool = True


def run_command(command: Command, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, map the outcome to an exit status (module docstring)."""
    args = command.build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    verbose = getattr(args, "verbose", None)
    previous = _on_sigterm(_raise_interrupt)
    try:
        if command.needs_tensorflow:
            prepare_tensorflow(command.prog, loud=debug or verbose == 2)
        status = command.run(args)
        return EXIT_OK if status is None else int(status)
    except Exception as e:  # noqa: BLE001 - mapped by the table; unknown ones re-shown as bugs
        return report_exception(command, e, debug)
    except KeyboardInterrupt as e:
        return report_exception(command, e, debug)
    finally:
        _on_sigterm(previous)


def exit_status(error: BaseException) -> tuple[int, str | None]:
    """(exit status, message label) for ``error``; label None means a bug (show the traceback)."""
    for kind, status, label in EXIT_CODES:
        if isinstance(error, kind):
            return status, label
    return EXIT_BUG, None


def report_exception(command: Command, error: BaseException, debug: bool = False) -> int:
    """Print what the user needs about ``error`` on stderr; return the exit status."""
    status, label = exit_status(error)
    if label is None or (debug and status != EXIT_INTERRUPTED):
        traceback.print_exception(error, file=sys.stderr)
    if label is None:
        print(f"{command.prog}: this is a bug in sila_keras; please report it with the traceback "
              "above.", file=sys.stderr)
    elif status == EXIT_INTERRUPTED:
        hint = f" {command.interrupted_hint}" if command.interrupted_hint else ""
        print(f"{command.prog}: interrupted.{hint}", file=sys.stderr)
    else:
        print(f"{command.prog}: {label}: {error}", file=sys.stderr)
    sys.stderr.flush()
    return status


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default once: not for switches (always off), not where the help
    already says what the default is, not for ``None`` (the help says what happens)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or any(action.default is v for v in
                                                (None, False, True, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        return super()._get_help_string(action)


# --------------------------------------------------------------------------- signals


def _raise_interrupt(signum, frame):
    """SIGTERM handler: stop like Ctrl-C (checkpoints stay committed, exit 130)."""
    raise KeyboardInterrupt


def _on_sigterm(handler):
    """Install a SIGTERM handler (main thread only); returns the previous one."""
    if handler is None:
        return None
    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, TypeError):  # not the main thread, or no previous Python handler
        return None


# --------------------------------------------------------------------------- TensorFlow start-up


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The x86 CPU flags of this machine, or None where they cannot be read (non-Linux, ARM)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def onednn_decision(flags: set[str] | None, environ: dict | os._Environ) -> str | None:
    """The ``TF_ENABLE_ONEDNN_OPTS`` value to set before TensorFlow is imported, or None.

    TensorFlow turns its oneDNN kernels on by itself only on CPUs with VNNI/BF16/AMX
    (:data:`ONEDNN_DEFAULT_FLAGS`); elsewhere (e.g. AVX2-only x86) they are off, although
    our benchmarks measured 1.4–2.5× faster training with them. Returns ``"1"`` for such an
    x86 CPU unless the user set ``TF_ENABLE_ONEDNN_OPTS`` (their choice wins).

    Example:
        >>> onednn_decision({"sse2", "avx2", "fma"}, {})
        '1'
        >>> onednn_decision({"avx2", "avx512_vnni"}, {}) is None
        True
        >>> onednn_decision({"avx2"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}) is None
        True
    """
    if "TF_ENABLE_ONEDNN_OPTS" in environ or not flags or "sse2" not in flags:
        return None  # the user decided, or not an x86 CPU whose flags we can read
    return None if flags & ONEDNN_DEFAULT_FLAGS else "1"


def prepare_tensorflow(prog: str, loud: bool = False) -> None:
    """Get TensorFlow ready for a command: oneDNN where it helps, and a quiet start-up.

    Does nothing if TensorFlow is already imported (an in-process caller set it up). Unless
    ``loud``, the C++ start-up lines (absl pre-init INFO, CUDA probes) that no environment
    variable silences are captured while TensorFlow is imported and shown only if the
    import fails; TF's and absl's Python loggers and Keras' start-up warnings are lowered
    to errors.
    """
    if "tensorflow" in sys.modules:
        return
    value = onednn_decision(cpu_flags(), os.environ)
    if value is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = value
        print(f"{prog}: note: this CPU has no VNNI/AMX, so TensorFlow would leave oneDNN off; "
              "turned on (TF_ENABLE_ONEDNN_OPTS=1; set it to 0 to opt out).", file=sys.stderr)
    if loud:
        import sila_keras

        sila_keras._load_api()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    with _captured_stderr() as captured, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe logs here, once
            import sila_keras

            sila_keras._load_api()
        except BaseException:
            captured.replay = True
            raise
    tf.get_logger().setLevel("ERROR")
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)


class _Captured:
    replay = False


@contextlib.contextmanager
def _captured_stderr() -> Iterator[_Captured]:
    """Send file descriptor 2 to a temporary file; replay it on failure (``replay = True``)."""
    state = _Captured()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured by a caller)
        yield state
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield state
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            if state.replay:
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode(errors="replace"))
