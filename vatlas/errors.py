"""Error classes whose message is shown to users as-is (one line, no traceback)."""

from __future__ import annotations


class VatlasError(Exception):
    """Base of user-facing errors; the message names the file or value at fault."""


class VideoError(VatlasError):
    """A video file or frame folder is missing, unreadable, empty, truncated or of the wrong type."""


class RoiError(VatlasError):
    """An ROI file is missing or malformed."""


# What every tool and door answers to an edit that lies entirely outside the editable region (ROI) of its
# frame: one plain sentence for people, whatever the op (server/edits/region.py raises it).
OUTSIDE_REGION = "That spot is outside the editable region on this frame"
