"""Image folders, labels files, preprocessing, augmentation and calibration sets."""

#: calibration images quantization asks for by default, and the fewest it accepts unless told otherwise
#: (here, not in calibration.py, so that configs can name them without importing numpy)
DEFAULT_SIZE = 512
MIN_IMAGES = 32
