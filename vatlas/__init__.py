"""vatlas: ROI neural atlases fitted from video, served for live collaborative editing."""

__version__ = "0.1.0"
