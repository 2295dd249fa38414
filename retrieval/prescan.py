"""What an index run reads from the image files before any model exists, and reading it while torch loads.

`cvret index` spends its first two seconds importing torch. Before the first view can be embedded
it must also hash every view file (what is new?) and, whenever views change, measure the gallery's
object extents (`calibration.measure_extents`: decoding a sample of views, labelling their ink with
scipy). None of that needs torch, so `start_scan` runs it in a forked child process while the main
process imports torch, and `build_index(..., scan=...)` takes the child's result instead of computing
it. The child measures the extents in every run: a run that changes nothing leaves them unused, but
the child's time is hidden behind the import either way.

Why a process and not a thread: importing torch holds the GIL nearly all the time (module code,
and the extension's loading and registration run with the GIL held), so a thread doing the scan
only took turns with it and the two together took as long as one after the other (measured: README,
Performance). A child forked *before* torch is imported is safe (no torch threads yet) and runs
on the other core. The result is only a speed-up: the same `scan_views` runs in the child as the
main process would run itself, its numbers come back bit for bit (pickled), and if the child fails
for any reason the main process scans inline, where the usual errors are raised and reported.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
from dataclasses import dataclass, field

from .images import content_sha256

# Forking is safe, and pays, only while none of these is loaded (their thread pools do not survive a fork).
_NOT_BEFORE_FORK = ("torch",)


@dataclass
class ViewScan:
    """The views' content hashes (by position; unreadable ones map to their one-line error) and, when asked
    for, the gallery's extents measured on them (`calibration.measure_extents`)."""

    views: list
    max_pixels: int | None
    shas: dict[int, str] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)
    extents: dict | None = None

    def covers(self, views: list, max_pixels: int | None) -> bool:
        """Whether this scan is of exactly `views` read with `max_pixels` (else the caller scans again)."""
        return self.max_pixels == max_pixels and self.views == views


def scan_views(views: list, max_pixels: int | None = None, extents: bool = False) -> ViewScan:
    """Hash every view file; with `extents`, also measure the extents on `views` (no model needed)."""
    scan = ViewScan(list(views), max_pixels)
    for i, v in enumerate(views):
        try:
            scan.shas[i] = content_sha256(v.path)
        except OSError as e:
            scan.unreadable[i] = f"{v.path}: cannot read ({e.strerror or e})"
    if extents:
        from .calibration import measure_extents

        scan.extents = measure_extents([(v.domain, v.shape, v.viewpoint, v.path) for v in views], max_pixels)
    return scan


class PendingScan:
    """A `scan_views` running in a forked child; `result()` waits for it (None when the child failed)."""

    def __init__(self, views: list, max_pixels: int | None, extents: bool):
        self.views, self.max_pixels, self.extents = list(views), max_pixels, extents
        ctx = multiprocessing.get_context("fork")
        for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice (by the child too)
            stream.flush()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_scan_in_child, args=(send, self.views, max_pixels, extents),
                                 name="cvret-prescan", daemon=True)  # never outlives an early exit
        self._proc.start()
        send.close()  # the child holds the only sending end: its exit is our end of file
        self._result: ViewScan | None = None
        self._done = False

    def result(self) -> ViewScan | None:
        if not self._done:
            self._done = True
            try:
                got = self._recv.recv()  # (shas, unreadable, extents): the views themselves are ours already
                if got is not None:
                    self._result = ViewScan(self.views, self.max_pixels, *got)
            except (EOFError, OSError):  # the child died before sending: scan inline instead
                self._result = None
            finally:
                self._recv.close()
                self._proc.join()
        return self._result


def _scan_in_child(send, views, max_pixels, extents):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to report, once
    try:
        scan = scan_views(views, max_pixels, extents)
        send.send((scan.shas, scan.unreadable, scan.extents))
    except BaseException:  # noqa: BLE001 - any failure: the parent scans inline and reports it itself
        with contextlib.suppress(BaseException):
            send.send(None)
    finally:
        send.close()


def start_scan(views: list, max_pixels: int | None = None, extents: bool = False) -> PendingScan | None:
    """`scan_views` in a forked child, or None where forking is unavailable or unsafe (torch already loaded:
    the caller then scans inline, as `build_index` does when given no scan)."""
    if any(m in sys.modules for m in _NOT_BEFORE_FORK) or not sys.platform.startswith("linux"):
        return None  # (macOS: fork is unsafe once system frameworks are loaded; Windows has no fork)
    try:
        return PendingScan(views, max_pixels, extents)
    except OSError:  # no process to spare: scan inline
        return None
