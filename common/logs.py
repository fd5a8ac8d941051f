"""Logging set-up shared by both command-line tools: human lines, or JSON for machines."""

from __future__ import annotations

import datetime
import json
import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("aioice", "aiortc", "aiohttp.access")
TEXT = "text"
JSON = "json"
LOG_FORMATS = (TEXT, JSON)
# A LogRecord's own attributes; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line (journald, log shippers): time, level, logger, message,
    and the fields a call passed in ``extra=`` (session, camera, remote address...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool, str)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(verbose: int = 0, quiet: bool = False, log_format: str = TEXT) -> None:
    """INFO for our lifecycle events; -v adds aiortc/aioice detail, -vv our per-packet DEBUG."""
    level = logging.DEBUG if verbose >= 2 else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == JSON else logging.Formatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 1 else logging.WARNING)
