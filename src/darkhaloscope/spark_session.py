"""The one SparkSession recipe of the project (stage ``parent``'s per-sweep part, stage ``stamps``).

:func:`spark_session` starts (or reuses) a session whose Python workers run this interpreter,
import darkhaloscope from THIS checkout (an editable install may point at another tree, e.g. in
a ``dvc exp`` or test copy of the repository) and get the driver's ``NPY_DISABLE_CPU_FEATURES``
(numpy's SIMD pin set by stages/_common.py, so executors compute the same bytes as the driver on
any CPU). The driver JVM logs errors only (:data:`LOG4J2_PROPERTIES`; a JVM already running keeps
its logging) and py4j's own log records are silenced. On a ``local`` master everything binds to
127.0.0.1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import warnings

_SRC_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../src

#: the driver JVM's log4j2 configuration: errors only, on stderr, prefixed ``[spark]``. Task failures
#: (Executor, TaskSetManager; a Ctrl-C kills Python workers mid-task) are not logged: the driver gets
#: them as an exception and reports them itself. ``PythonGatewayServer`` (the class that sets up logging
#: in a Python driver) at the root level stops Spark from resetting the root level to WARN, and saying so.
LOG4J2_PROPERTIES = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = stderr
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [spark] %p %c{1}: %m%n
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
logger.executor.name = org.apache.spark.executor.Executor
logger.executor.level = off
logger.tasksets.name = org.apache.spark.scheduler.TaskSetManager
logger.tasksets.level = off
logger.pythonrunner.name = org.apache.spark.api.python.PythonRunner
logger.pythonrunner.level = off
"""


class _Py4JRootRecords(logging.Filter):
    """Drop the records py4j logs on the ROOT logger (``logging.exception("... while sending command")``,
    with tracebacks) when a call is interrupted or the JVM goes away: the stage reports its own line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}py4j{os.sep}" not in record.pathname


def _quiet_py4j() -> None:
    logging.getLogger("py4j").setLevel(logging.CRITICAL)
    root = logging.getLogger()
    if not any(isinstance(f, _Py4JRootRecords) for f in root.filters):
        root.addFilter(_Py4JRootRecords())


def _log4j2_file() -> str:
    """The path of :data:`LOG4J2_PROPERTIES` written once (content-addressed) into the temp directory."""
    digest = hashlib.sha256(LOG4J2_PROPERTIES.encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"darkhaloscope-log4j2-{digest}.properties")
    if not os.path.exists(path):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(LOG4J2_PROPERTIES)
        os.replace(tmp, path)
    return path


def spark_session(master: str, driver_memory: str, app: str = "darkhaloscope"):
    """A SparkSession whose Python workers run this interpreter (so they import darkhaloscope).

    The driver JVM logs errors only (:data:`LOG4J2_PROPERTIES`; a JVM already running keeps
    its logging) and py4j's own log records are silenced.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    _quiet_py4j()
    with warnings.catch_warnings():  # pyspark's import-time notice about the pandas version (unused here)
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        from pyspark.sql import SparkSession

        b = (SparkSession.builder.master(master).appName(app)
             .config("spark.driver.memory", driver_memory)
             .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{_log4j2_file()}")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.python.worker.reuse", "true")
             # workers import darkhaloscope from THIS checkout, not from wherever the package is installed
             # (an editable install points at another tree, e.g. in a dvc exp / test copy of the repository)
             .config("spark.executorEnv.PYTHONPATH", _SRC_DIR))
        if os.environ.get("NPY_DISABLE_CPU_FEATURES"):
            b = b.config("spark.executorEnv.NPY_DISABLE_CPU_FEATURES", os.environ["NPY_DISABLE_CPU_FEATURES"])
        if master.startswith("local"):
            b = b.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
        session = b.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")  # also in a JVM whose logging an earlier failed job turned off
    return session


__all__ = ["LOG4J2_PROPERTIES", "spark_session"]
