"""What the sender and the receiver share: ICE and codec configuration, the frame stamp, logging."""
