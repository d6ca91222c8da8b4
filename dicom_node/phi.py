"""What may leave the data sets: log lines, audit records and failure reasons name tags,
keywords, UIDs and counts, never attribute values.

Patient data (names, IDs, birth dates, accession numbers, ...) lives in the instances and in
the result objects, nowhere else. Three tools keep it there:

* :class:`PhiFreeError`, the base of the node's own exceptions whose messages are composed
  only of tags, keywords, UIDs, numbers and fixed text;
* :func:`describe_exception`, a one-line description of *any* exception that is safe to log,
  store or audit: the message of a :class:`PhiFreeError` or an ``OSError`` (paths in the
  spool are made of UIDs), otherwise the exception type and where it was raised, with the
  text withheld (a pydicom ``ValueError`` quotes the value it could not convert);
* :func:`install_log_guard`, which makes every handler of the root logger format tracebacks
  through :class:`SafeFormatter` (frames and exception types; messages only when PHI-free)
  and withhold the text of records from libraries that quote values (pydicom, highdicom,
  Python warnings) and of named mapping arguments (a task runner's ``exc``).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from types import TracebackType

#: Loggers whose message text is withheld: they quote data-set values (pydicom's validation
#: warnings, highdicom's "potentially invalid" person names, warnings routed to logging).
QUOTING_LOGGERS: tuple[str, ...] = ("pydicom", "highdicom", "py.warnings")
WITHHELD = "text withheld: it may quote patient data"
_WARNING_HEAD = re.compile(r"^(?P<where>.*?:\d+): (?P<category>\w+):")


class PhiFreeError(Exception):
    """Base of exceptions whose message holds no attribute value (tags, UIDs, counts only).

    :func:`describe_exception` and :class:`SafeFormatter` print the message of these; every
    other exception is described by its type and location.
    """


def _raised_at(exc: BaseException) -> str:
    """``file.py:123`` of the innermost frame of `exc`'s traceback ("" without one)."""
    tb: TracebackType | None = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"


def is_phi_free(exc: BaseException) -> bool:
    """Whether `exc`'s message may be shown (a :class:`PhiFreeError` or an ``OSError``)."""
    return isinstance(exc, (PhiFreeError, OSError))


def describe_exception(exc: BaseException, *, location: bool = True) -> str:
    """A one-line description of `exc` that holds no attribute value.

    Parameters
    ----------
    exc : BaseException
        Any exception.
    location : bool
        Name the file and line an exception with withheld text was raised at. Default True.

    Returns
    -------
    str
        ``"Type: message"`` for PHI-free exceptions (:func:`is_phi_free`), else e.g.
        ``"ValueError at valuerep.py:681 (text withheld: it may quote patient data)"``.
    """
    name = type(exc).__name__
    if is_phi_free(exc):
        text = str(exc)
        return f"{name}: {text}" if text else name
    where = _raised_at(exc) if location else ""
    return f"{name}{f' at {where}' if where else ''} ({WITHHELD})"


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or during, oldest first."""
    found: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found.append(current)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return found[::-1]


def format_exception_safely(exc: BaseException) -> str:
    """A traceback of `exc` (and its chain): frames and source lines, messages only when
    PHI-free (:func:`describe_exception`)."""
    parts = []
    for item in _chain(exc):
        lines = ["Traceback (most recent call last):\n",
                 *traceback.format_tb(item.__traceback__),
                 describe_exception(item, location=False) + "\n"]
        parts.append("".join(lines))
    return "\nThen:\n".join(parts).rstrip("\n")


class SafeFormatter(logging.Formatter):
    """A formatter whose tracebacks never carry exception messages that may quote values."""

    def formatException(self, ei: tuple) -> str:  # noqa: N802 - logging's name
        """Format ``exc_info`` with :func:`format_exception_safely`."""
        exc = ei[1] if ei and len(ei) > 1 else None
        if exc is None:
            return super().formatException(ei)
        return format_exception_safely(exc)


class WithholdQuotingText(logging.Filter):
    """Replaces the text of log records that may quote attribute values.

    Parameters
    ----------
    loggers : iterable of str
        Logger names (and their children) whose message text is withheld.
        Default :data:`QUOTING_LOGGERS`.
    mapping_args : iterable of str
        Keys of mapping-style arguments whose values are withheld wherever they appear,
        e.g. ``("exc",)`` for a task runner that logs ``"...: %(exc)s"``.
    keep_when : mapping of str to collection of str, optional
        Records whose mapping arguments hold one of these values keep their
        `mapping_args`, e.g. ``{"description": ("rejected",)}`` when the rejections are the
        caller's own PHI-free exceptions.
    """

    def __init__(self, loggers: Iterable[str] = QUOTING_LOGGERS,
                 mapping_args: Iterable[str] = (),
                 keep_when: Mapping[str, Collection[str]] | None = None) -> None:
        super().__init__()
        self.loggers = tuple(loggers)
        self.mapping_args = tuple(mapping_args)
        self.keep_when = dict(keep_when or {})

    def _quoting(self, name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in self.loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite `record` in place when needed; never drops a record."""
        if self._quoting(record.name):
            where = f"{Path(record.pathname).name}:{record.lineno}"
            if record.name == "py.warnings":
                text = record.args[0] if isinstance(record.args, tuple) and record.args \
                    else record.msg
                head = _WARNING_HEAD.match(str(text))
                if head:
                    where = f"{Path(head['where']).name} ({head['category']})"
            record.msg = "%s from %s at %s (%s)"
            record.args = (record.levelname.lower(), record.name, where, WITHHELD)
        elif self.mapping_args and isinstance(record.args, Mapping):
            if any(record.args.get(k) in values for k, values in self.keep_when.items()):
                return True
            hidden = [k for k in self.mapping_args if k in record.args]
            if hidden:
                record.args = {**record.args, **{k: f"({WITHHELD})" for k in hidden}}
        return True


def install_log_guard(logger: logging.Logger | None = None, *,
                      mapping_args: Iterable[str] = (),
                      keep_when: Mapping[str, Collection[str]] | None = None) -> None:
    """Guard every handler of `logger` (default: the root logger) against patient data.

    Each handler gets a :class:`SafeFormatter` (keeping its format string) and a
    :class:`WithholdQuotingText` filter; Python warnings are routed to logging
    (``py.warnings``), where their text is withheld too. Idempotent.

    Parameters
    ----------
    logger : logging.Logger, optional
        Whose handlers to guard. Default the root logger.
    mapping_args, keep_when
        Passed to :class:`WithholdQuotingText`.
    """
    logger = logger or logging.getLogger()
    logging.captureWarnings(True)
    for handler in logger.handlers:
        current = handler.formatter
        if not isinstance(current, SafeFormatter):
            fmt = current._fmt if current is not None else None  # noqa: SLF001
            datefmt = current.datefmt if current is not None else None
            handler.setFormatter(SafeFormatter(fmt, datefmt))
        if not any(isinstance(f, WithholdQuotingText) for f in handler.filters):
            handler.addFilter(WithholdQuotingText(mapping_args=mapping_args,
                                                  keep_when=keep_when))
