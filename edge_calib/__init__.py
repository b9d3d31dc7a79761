"""edge-calib: on-device domain adaptation with light-weight data calibrators.

A frozen (possibly compressed) classifier F_s stays untouched; per target domain a small
image-to-image network G_c is trained so that F_s(G_c(x)) works on the target domain and still
on the source domain (Ye et al., CVPR 2020). The workstation side (``data``, ``models``,
``train``, ``compress``, ``export``) uses torch; the device side (``bundle``, ``engines``,
``runtime``, ``bench``) uses numpy, onnxruntime or TensorRT, and OpenCV only.
"""

import os

__version__ = "0.2.0"  # the package version (pyproject.toml reads it from here)

# OpenCV refuses, before allocating it, any image whose header says it holds more pixels than
# this, whatever the format (its own default is 1 << 30); 67 MP (8192 x 8192) unless the user
# sets OPENCV_IO_MAX_IMAGE_PIXELS. edge-calib names each refused file itself.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 26))
