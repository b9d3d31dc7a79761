"""Measuring a deploy bundle on this device (no torch needed): latency, compute and overhead
reports, accuracy through the engines (`eval --deploy`) and the board self-check (`doctor`)."""
