"""The webrtc-webcam receiver: signalling, decoding, and sinks for the frames."""

from .client import Receiver, ReceiverError
from .stats import FrameStats

__all__ = ["FrameStats", "Receiver", "ReceiverError"]
