"""Frames, videos, degradations, datasets and calibration clips."""
