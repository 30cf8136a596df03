"""OpenCV's own pixel limit, set to the server's before OpenCV is loaded.

Why: the server refuses oversized images from their header (service/image_header.py), but a
header reader and libjpeg/libtiff can disagree on where the real frame header is; a 340-byte JPEG
then made OpenCV allocate 1.9 GB for a 30000 x 30000 frame. OpenCV checks width x height against
OPENCV_IO_MAX_IMAGE_PIXELS before it allocates, but reads that variable once, when the library is
loaded, so it must be set before the first `import cv2` of the process.
"""

from __future__ import annotations

import os
import sys

ENV_NAME = "OPENCV_IO_MAX_IMAGE_PIXELS"


def set_decoder_pixel_limit(max_pixels: int) -> bool:
    """Give OpenCV's decoders the server's pixel limit; False when cv2 is already loaded (too late)."""
    os.environ[ENV_NAME] = str(int(max_pixels))
    return "cv2" not in sys.modules
