"""The command log: what the terminal does not show goes to a file under the results root.

Quiet (the default): Ray's own log records (its token-auth notice, say), Python warnings of the driver
and of the runs (captured per run by `execute_run` and logged here by the runner), and the workers'
stdout / stderr (not forwarded: Ray keeps them in its session logs) stay off the terminal, which shows
progress, our messages and errors. Verbose (`-v`): everything also goes to stderr, as without this module.

Touches the `ray` loggers by name only, so this module never imports Ray.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
RUN_LOGGER = "orchestrator.runs"  # warnings raised inside runs, logged by the driver with the run id

PACKAGE_DIR = Path(__file__).resolve().parent

_handler: logging.Handler | None = None
_ORIGINAL_SHOWWARNING = warnings.showwarning
_verbose = True  # until a command log starts, nothing is rerouted (the Python API behaves as plain Python)


def start(directory: Path, command: str, verbose: bool = False) -> Path:
    """Open `<directory>/<UTC time>-<command>.log` for this process and route logs and warnings to it."""
    global _handler, _verbose
    stop()
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{command}.log"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _handler = logging.FileHandler(directory / name, encoding="utf-8")
    except OSError:  # a read-only results root (`report` of someone else's results): log to a temp dir
        directory = Path(tempfile.mkdtemp(prefix="orchestrator-log-"))
        _handler = logging.FileHandler(directory / name, encoding="utf-8")
    path = directory / name
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    _verbose = verbose
    root = logging.getLogger()
    root.addHandler(_handler)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    if verbose:
        echo = logging.StreamHandler(sys.stderr)
        echo.setLevel(logging.WARNING)
        echo.set_name("orchestrator-echo")
        root.addHandler(echo)
    warnings.showwarning = _show_warning
    route_library_loggers()
    return path


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Log every warning; the orchestrator's own (an unreadable results file, say) also show in the terminal."""
    logging.getLogger("py.warnings").warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)
    if not _verbose and Path(filename).resolve().parent == PACKAGE_DIR:  # with -v, the echo handler shows all
        print(f"warning: {message}", file=sys.stderr)


def route_library_loggers() -> None:
    """Send Ray's loggers (which print to stderr and do not propagate) to the command log; call after Ray
    is imported. Without a command log, or with `-v`, nothing changes."""
    if _handler is None or _verbose:
        return
    for name in [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        if not logger.propagate or name == "ray":
            logger.addHandler(_handler)
            logger.propagate = False


def forward_worker_output() -> bool:
    """Whether Ray should print the workers' stdout / stderr in this terminal (`-v`, or no command log)."""
    return _handler is None or _verbose


def run_warnings(run_id: str, messages: list[str]) -> None:
    """Log the warnings a run raised (one record each)."""
    logger = logging.getLogger(RUN_LOGGER)
    for message in messages:
        logger.warning("run %s: %s", run_id, message)


def stop() -> None:
    """Close the command log and undo the routing of warnings (Ray's loggers stay as they were routed)."""
    global _handler, _verbose
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler is _handler or handler.get_name() == "orchestrator-echo":
            root.removeHandler(handler)
    if _handler is not None:
        _handler.close()
        warnings.showwarning = _ORIGINAL_SHOWWARNING
    _handler, _verbose = None, True
