"""Cheap stack capture, and finding the user's own line in it.

Capture keeps code objects and instruction offsets only, in one flat tuple
``(code, offset, code, offset, ...)``, innermost first: no frame objects, no
locals, and one object per stack rather than one per frame (every record's
stacks are freed when it leaves the bounded history). Line numbers, file
names and the "is this the user's code?" decision are resolved later, when a
stack is shown or an event is emitted, and cached by file name.

In a thread that runs functions for asgiref's ``sync_to_async`` (the async
ORM's executor threads), the coroutines awaiting the call are spliced in after
asgiref's handler frame: the application's ``await`` line is there, not in the
thread (``conntrace.tasks``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from types import CodeType, FrameType
from typing import Optional

from conntrace import conf, events, tasks
from conntrace.names import Placeholder

RawFrame = tuple[CodeType, int]
# Flat: code, offset, code, offset... (see frames()).
RawStack = tuple[CodeType | int, ...]

# Frames of these packages are never "the user's line".
DEFAULT_HIDDEN_MODULES = (
    "conntrace",
    "django",
    "debug_toolbar",
    "asgiref",
    # Servers and workers: WSGI, ASGI, uWSGI (pyuwsgi), Celery, green threads.
    "gunicorn",
    "uvicorn",
    "daphne",
    "hypercorn",
    "waitress",
    "werkzeug",
    "channels",
    "pyuwsgi",
    "uwsgi",
    "uwsgidecorators",
    "celery",
    "billiard",
    "kombu",
    "vine",
    "amqp",
    "gevent",
    "greenlet",
    "psycogreen",
    "runpy",
    "psycopg",
    "psycopg2",
    "psycopg_pool",
    "MySQLdb",
    "structlog",
    "django_structlog",
    "sentry_sdk",
    "opentelemetry",
    "_pytest",
    "pytest",
    "pluggy",
    "pytest_django",
    "xdist",
)


# Bound on the per-file caches, so that memory stays flat whatever code runs.
MAX_CACHED_FILES = 4096
# Bound on the cache of formatted frames (one entry per call site seen in a shown stack).
MAX_CACHED_FRAMES = 16384

# When no frame is the user's, how many of the framework's frames stand in for them.
FALLBACK_FRAMES = 8
# What ``first_user_frame`` says when no frame is the application's (a server forking, Django
# closing at request end): naming a launcher or a server's file would send the reader there.
NO_APPLICATION_FRAME = Placeholder.NO_APPLICATION_FRAME.value
_SITE = os.sep + "site-packages" + os.sep

_ASYNC_UNSAFE = os.path.join("django", "utils", "asyncio.py")
_MANAGE_PY = os.sep + "manage.py"


def capture(depth: int, skip: int = 1, getframe: Callable[[int], FrameType] = sys._getframe) -> RawStack:
    """Return up to ``depth`` raw frames of the caller's stack, innermost first, flat.

    ``skip`` counts frames above this function's caller to leave out. In a
    thread that runs ``sync_to_async`` calls, up to ``depth`` frames of the
    awaiting coroutines follow asgiref's handler frame.
    """
    frame: Optional[FrameType] = getframe(skip + 1)
    if tasks.ran_sync_to_async():
        try:
            return _capture_across_await(frame, depth)
        finally:
            del frame
    out: list[CodeType | int] = []
    append = out.append
    while frame is not None and depth:
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back
        depth -= 1
    del frame
    return tuple(out)


def _capture_across_await(frame: Optional[FrameType], depth: int) -> RawStack:
    """Capture a worker thread's stack with the awaiting coroutines after asgiref's handler frame.

    The handler may lie deeper than ``depth``: the walk goes on, keeping
    nothing, until it is found, and the coroutines then follow the kept frames.
    """
    out: list[CodeType | int] = []
    awaiting: list[CodeType | int] = []
    splice_at = -1
    kept = 0
    while frame is not None and (kept < depth or splice_at < 0):
        code = frame.f_code
        if kept < depth:
            out += (code, frame.f_lasti)
            kept += 1
        if splice_at < 0 and code is tasks.HANDLER_CODE:
            splice_at = len(out)
            try:
                awaiting = tasks.awaiting_frames(frame, depth)
            except Exception as exc:
                events.internal_error("await_frames", exc)  # the thread's own frames are still kept
        frame = frame.f_back
    del frame
    if not awaiting:
        return tuple(out)
    return (*out[:splice_at], *awaiting, *out[splice_at:])


def frames(stack: RawStack) -> Iterator[RawFrame]:
    """Return the ``(code, offset)`` pairs of a raw stack, innermost first."""
    pairs = iter(stack)
    return zip(pairs, pairs, strict=False)  # type: ignore[arg-type]


def codes(stack: RawStack) -> tuple[CodeType, ...]:
    """Return the code objects of a raw stack, innermost first."""
    return stack[::2]  # type: ignore[return-value]


def line_of(code: CodeType, lasti: int) -> int:
    """Return the source line of instruction offset ``lasti`` in ``code``."""
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


def _stdlib_prefixes() -> tuple[str, ...]:
    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib")}
    paths |= {os.path.dirname(os.__file__)}
    return tuple(os.path.join(p, "") for p in paths if p)


def _launcher_dirs() -> frozenset[str]:
    """Return the directories whose ``<module>`` frames are console-script launchers (``bin/gunicorn``).

    The interpreter's scripts directory and its executable's, and the directory
    of ``sys.argv[0]`` when that is an entry point run from elsewhere (pipx's
    ``~/.local/bin``, ``/usr/local/bin``).
    """
    dirs = {sysconfig.get_path("scripts"), os.path.dirname(sys.executable or ""), _entry_point_dir()}
    dirs.discard("")
    return frozenset({os.path.abspath(d) for d in dirs} | {os.path.realpath(d) for d in dirs})


def _entry_point_dir() -> str:
    """Return the directory of ``sys.argv[0]`` if it is a launcher: no ``.py``, in ``bin`` or ``Scripts``."""
    argv = getattr(sys, "argv", None) or [""]
    path = os.path.abspath(argv[0]) if argv[0] and not argv[0].startswith("-") else ""
    directory = os.path.dirname(path)
    if not os.path.isfile(path) or path.endswith((".py", ".pyw")):
        return ""
    return directory if os.path.basename(directory) in ("bin", "Scripts") else ""


def module_locations(name: str) -> tuple[str, ...]:
    """Return where module ``name`` lives: its package directories, or its file; () if not found.

    An imported module is asked directly: some replace themselves in ``sys.modules``
    with an object that has no ``__spec__`` (kombu), and ``find_spec`` then raises.
    """
    module = sys.modules.get(name)
    if module is not None:
        paths = list(getattr(module, "__path__", None) or ())
        origin = getattr(module, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec(name)
        except Exception:
            # Also a parent package that raises at import: a bad HIDE_MODULES entry hides nothing.
            return ()
        if spec is None:
            return ()
        paths = list(spec.submodule_search_locations or ())
        origin = spec.origin
    if paths:
        return tuple(os.path.join(path, "") for path in paths)
    if isinstance(origin, str) and os.path.isabs(origin):
        return (origin,)
    return ()


def _module_prefixes(modules: Iterable[str]) -> tuple[str, ...]:
    return tuple(prefix for name in modules for prefix in module_locations(name))


def in_place(place: Optional[str]) -> str:
    """Return "in path:line in func" for a message, or "with no application frame (...)"."""
    if place is None or place.startswith(NO_APPLICATION_FRAME):
        return f"with {place or NO_APPLICATION_FRAME}"
    return f"in {place}"


class FrameFilter:
    """Decide which frames are hidden (framework, server, stdlib) and format frames."""

    def __init__(self, extra_hidden: Iterable[str] = ()) -> None:
        self.hidden_prefixes = _module_prefixes((*DEFAULT_HIDDEN_MODULES, *extra_hidden))
        self.stdlib_prefixes = _stdlib_prefixes()
        self._plumbing = _module_prefixes(("conntrace", "django.db.backends", "django.db.utils"))
        self._django = _module_prefixes(("django",))
        self.launcher_dirs = _launcher_dirs()
        self._hidden_by_file: dict[str, bool] = {}
        self._launcher_by_file: dict[str, bool] = {}
        self._short_by_file: dict[str, str] = {}
        self._text_by_frame: dict[tuple[str, str, int, int], str] = {}
        try:
            self._cwd = os.path.join(os.getcwd(), "")
        except OSError:
            self._cwd = ""

    def is_hidden(self, filename: str) -> bool:
        """Return True if frames from ``filename`` are not the user's own code."""
        hidden = self._hidden_by_file.get(filename)
        if hidden is None:
            hidden = self._compute_hidden(filename)
            if len(self._hidden_by_file) >= MAX_CACHED_FILES:
                self._hidden_by_file.clear()  # generated code can have a new file name per call
            self._hidden_by_file[filename] = hidden
        return hidden

    def hides(self, code: CodeType) -> bool:
        """Return True if frames of ``code`` are not the user's: a hidden file, a launcher's ``<module>``.

        ``manage.py`` is a launcher too: naming it as the closer of a connection
        Django closed at request end (runserver) would send the reader there.
        """
        filename = code.co_filename
        if self.is_hidden(filename):
            return True
        name = code.co_name
        if name == "<module>":
            return self.is_launcher(filename) or filename.endswith(_MANAGE_PY)
        # Django's manage.py: its module level and main() only run the command line.
        return name == "main" and filename.endswith(_MANAGE_PY)

    def is_launcher(self, filename: str) -> bool:
        """Return True if ``filename`` lies in a directory of console-script launchers."""
        launcher = self._launcher_by_file.get(filename)
        if launcher is None:
            launcher = not filename.startswith("<") and not self.launcher_dirs.isdisjoint(
                (os.path.dirname(os.path.abspath(filename)), os.path.dirname(os.path.realpath(filename)))
            )
            if len(self._launcher_by_file) >= MAX_CACHED_FILES:
                self._launcher_by_file.clear()
            self._launcher_by_file[filename] = launcher
        return launcher

    def _compute_hidden(self, filename: str) -> bool:
        if filename.startswith("<frozen"):
            return True
        if filename.startswith(self.hidden_prefixes):
            return True
        if filename.startswith(self.stdlib_prefixes):
            return "site-packages" not in filename and "dist-packages" not in filename
        return False

    def short_path(self, filename: str) -> str:
        """Return ``filename`` relative to the working directory when it lies below it."""
        short = self._short_by_file.get(filename)
        if short is None:
            short = filename
            if self._cwd and filename.startswith(self._cwd) and _SITE not in filename:
                short = filename[len(self._cwd) :]
            elif _SITE in filename:
                # Installed packages read as their import path: django/db/__init__.py.
                short = filename.rsplit(_SITE, 1)[1]
            else:
                for prefix in self.stdlib_prefixes:
                    if filename.startswith(prefix):
                        short = filename[len(prefix) :]
                        break
            if len(self._short_by_file) >= MAX_CACHED_FILES:
                self._short_by_file.clear()
            self._short_by_file[filename] = short
        return short

    def format_frame(self, raw: RawFrame) -> str:
        """Return ``"path:line in function"`` for one raw frame.

        Cached by file name, function and offset rather than by code object:
        finding the line walks the code's whole line table, and the same call
        sites come back in every event that shows a stack.
        """
        code, lasti = raw
        key = (code.co_filename, code.co_qualname, code.co_firstlineno, lasti)
        text = self._text_by_frame.get(key)
        if text is None:
            text = f"{self.short_path(code.co_filename)}:{line_of(code, lasti)} in {code.co_qualname}"
            if len(self._text_by_frame) >= MAX_CACHED_FRAMES:
                self._text_by_frame.clear()
            self._text_by_frame[key] = text
        return text

    def format_stack(self, stack: RawStack) -> list[str]:
        """Return every frame of ``stack`` formatted, innermost first."""
        return [self.format_frame(raw) for raw in frames(stack)]

    def visible_stack(self, stack: RawStack) -> list[str]:
        """Return the user's frames of ``stack`` formatted.

        When none is the user's (Django opened the connection for itself), the
        frames outside Django's database layer, so the stack still says who.
        """
        visible = [self.format_frame(raw) for raw in frames(stack) if not self.hides(raw[0])]
        if visible:
            return visible
        outside = [raw for raw in frames(stack) if not self._is_plumbing(raw[0].co_filename)]
        return [self.format_frame(raw) for raw in outside[:FALLBACK_FRAMES]]

    def is_plumbing_or_django(self, filename: str) -> bool:
        """Return True for frames of conntrace and of Django itself."""
        return filename.startswith(self._django) or self._is_plumbing(filename)

    def _is_plumbing(self, filename: str) -> bool:
        """Return True for conntrace's and Django's DB-connection frames."""
        return filename.startswith(self._plumbing) or filename.endswith(_ASYNC_UNSAFE)

    def first_user_frame(self, stack: RawStack) -> Optional[str]:
        """Return the innermost frame that is the user's own code, formatted.

        When every frame is hidden, say so, with the innermost frame outside
        conntrace and Django's connection plumbing in parentheses for whoever
        debugs it; None for an empty stack (nothing was captured).
        """
        for raw in frames(stack):
            if not self.hides(raw[0]):
                return self.format_frame(raw)
        if not stack:
            return None
        for raw in frames(stack):
            if not self._is_plumbing(raw[0].co_filename):
                return f"{NO_APPLICATION_FRAME} (innermost: {self.format_frame(raw)})"
        return NO_APPLICATION_FRAME


_filter: Optional[FrameFilter] = None


def frame_filter() -> FrameFilter:
    """Return the process-wide filter, built from the current settings on first use."""
    global _filter
    if _filter is None:
        _filter = FrameFilter(conf.get()["HIDE_MODULES"])
    return _filter


def reset_filter() -> None:
    """Drop the cached filter so the next use reads the settings again."""
    global _filter
    _filter = None
