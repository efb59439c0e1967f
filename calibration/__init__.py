"""Calibration for int8 engines: per-block activation capture, range methods, QDQ writing, TensorRT cache format."""
