"""The webrtc-webcam sender: sources, fan-out, HTTP signalling and the browser page."""

from .app import SenderConfig, create_app

__all__ = ["SenderConfig", "create_app"]
