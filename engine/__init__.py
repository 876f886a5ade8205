"""The pure matching core: orders in, events out. No I/O, no clock, no randomness."""
