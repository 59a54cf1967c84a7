"""Inference protocols: long videos on the host, one window (or batch of crops) at a time on the device."""
