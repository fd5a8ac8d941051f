"""The webrtc-webcam receiver: signalling, decoding, and sinks for the frames."""

# OpenCV before PyAV: both wheels bundle their own libxcb, and when PyAV's is loaded
# first, cv2.imshow() spins forever inside Qt (opencv-python 5.0, av 18).
import cv2  # noqa: F401  isort: skip

from .client import Gap, Receiver, ReceiverError
from .stats import FrameStats

__all__ = ["FrameStats", "Gap", "Receiver", "ReceiverError"]
