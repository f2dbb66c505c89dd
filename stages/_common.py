"""Shared start-up for the stage scripts: run from the repository root, read params.yaml,
and turn the project's own errors into one clear line instead of a traceback.

Every stage script ends with ``run("<stage>", main)``: ``main(params)`` does the work. A
problem with the inputs - a params.yaml key, a survey file, a stamp file, a checkpoint - is
reported as ``[<stage>] <message>`` on stderr with exit status 1. Those are the errors this
project raises itself (ParamsError, SurveyError, and ValueError / OSError / KeyError /
RuntimeError raised in src/darkhaloscope or stages/), whose messages name the file, column
or key and what was expected. Anything raised inside a third-party library is a bug to look
at and keeps its full traceback; ``DHS_TRACEBACK=1`` shows the traceback for every error.

Byte-identical data on every machine: numpy picks its SIMD code paths at import time by CPU
(x86-64-v3 = AVX2, v4 = AVX-512), and on AVX-512 machines its float64 log10 / sin / cos / exp
(SVML) differ from the AVX2 and baseline paths in the last bit, which changed the parent
sample's magnitudes and the manifest's shear and source offsets between machines. The data
stages (DATA_STAGES) therefore run numpy's x86-64-v2 baseline code on every x86-64 CPU: this
module sets ``NPY_DISABLE_CPU_FEATURES`` before numpy is imported (stage scripts import it
first) and refuses to run a data stage whose numpy was imported earlier. Spark's Python
workers inherit the setting. Training and scoring keep numpy's fastest paths.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import signal
import sys
from typing import Callable

#: stages whose outputs must be byte-identical across machines (dvc.lock data hashes)
DATA_STAGES = ("survey", "parent", "manifest", "coadds", "stamps")
#: numpy 2.x dispatch groups above the x86-64-v2 baseline (see numpy's __cpu_dispatch__)
NUMPY_SIMD_ABOVE_BASELINE = "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"


def pin_numpy_dispatch(script: str) -> bool:
    """For a data stage on x86-64: make numpy run its baseline code paths (before numpy loads).

    Returns True when the pin was set. Raises RuntimeError if numpy is already imported, since
    its dispatch could then no longer be narrowed.
    """
    stage = os.path.splitext(os.path.basename(script))[0]
    if stage not in DATA_STAGES or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if "numpy" in sys.modules and os.environ.get("NPY_DISABLE_CPU_FEATURES") != NUMPY_SIMD_ABOVE_BASELINE:
        raise RuntimeError(f"stages/{stage}.py imported numpy before _common: import _common first, so that "
                           f"numpy's SIMD dispatch is pinned and the stage's bytes do not depend on the CPU")
    os.environ["NPY_DISABLE_CPU_FEATURES"] = NUMPY_SIMD_ABOVE_BASELINE
    return True


pin_numpy_dispatch(sys.argv[0] if sys.argv else "")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from darkhaloscope.errors import ParamsError, SurveyError  # noqa: E402
from darkhaloscope.params import load_params  # noqa: E402

#: exit status of a stage stopped by Ctrl-C / SIGINT (the shell's 128 + SIGINT)
INTERRUPTED_STATUS = 130
#: error types reported as one line when raised by this project's code
USER_ERROR_TYPES = (ValueError, OSError, KeyError, RuntimeError, TypeError)
_OUR_DIRS = (os.path.join(ROOT, "src", "darkhaloscope") + os.sep, os.path.join(ROOT, "stages") + os.sep)


def setup(name: str) -> dict:
    """Configure logging, chdir to the repository root and return the validated params."""
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    os.chdir(ROOT)
    try:
        return load_params(os.environ.get("DHS_PARAMS", "params.yaml"))
    except ParamsError as e:
        sys.exit(f"[{name}] {e}")


def raised_by_us(exc: BaseException) -> bool:
    """True when ``exc`` was raised in this repository's code (src/darkhaloscope or stages/)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    return path.startswith(_OUR_DIRS)


def is_user_error(exc: BaseException) -> bool:
    """An input problem with a message meant for the user (not a bug needing a traceback);
    a full disk counts, wherever it was raised."""
    if isinstance(exc, (ParamsError, SurveyError)):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, USER_ERROR_TYPES) and raised_by_us(exc)


def error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not raised_by_us(exc):
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"disk full{where} (no space left on device): free space or move data/ to a disk with room, "
                f"then re-run; the stage's outputs were not written")
    msg = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
    return str(msg)


def stop_with_parent(name: str) -> None:
    """End this stage when the process that started it (``dvc repro``) ends or is killed, and turn
    SIGTERM into an ordinary exit, so outputs being written are cleaned up (atomic_dir, atomic_file)
    instead of a stage going on alone and writing into ``data/`` beside the next ``dvc repro``.

    Linux: prctl(PR_SET_PDEATHSIG, SIGTERM). Elsewhere only the SIGTERM handler is installed.
    """
    def on_term(signum, frame):
        logging.shutdown()
        sys.exit(f"[{name}] stopped by signal {signum} (its parent process ended or it was terminated)")

    signal.signal(signal.SIGTERM, on_term)
    if sys.platform.startswith("linux"):
        import ctypes

        parent = os.getppid()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the parent ended before the request took effect
            on_term(signal.SIGTERM, None)


def run(name: str, main: Callable[[dict], object]) -> None:
    """``main(setup(name))``; the project's own errors exit 1 with ``[name] <message>``.

    The stage stops when its parent process ends (see :func:`stop_with_parent`).
    """
    stop_with_parent(name)
    params = setup(name)
    try:
        main(params)
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's status for SIGINT (128 + 2)
        if os.environ.get("DHS_TRACEBACK") == "1":
            raise
        logging.shutdown()
        print(f"[{name}] interrupted (Ctrl-C / SIGINT): stopped; outputs being written were discarded",
              file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)
    except Exception as e:
        if os.environ.get("DHS_TRACEBACK") == "1" or not is_user_error(e):
            raise
        logging.shutdown()
        print(f"[{name}] {error_message(e)}", file=sys.stderr)
        # an error type may carry its own status (stamps.spark.StampsInterrupted: 130, like Ctrl-C here)
        status = getattr(e, "exit_status", 1)
        sys.exit(status if isinstance(status, int) else 1)
