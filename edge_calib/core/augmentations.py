"""The ``--augment`` choices and the photometric ranges, torch-free so the CLI's help can state
them (the transforms are ``train/augment.py``)."""

AUGMENTATIONS = ("none", "geometric", "photometric", "both")
# Uniform per image, in pixel units [0, 1].
GAIN, GAMMA, CONTRAST, COLOUR = (0.5, 1.5), (0.6, 1.6), (0.7, 1.3), (0.9, 1.1)
BLUR_PROBABILITY, BLUR_SIGMA = 0.5, (0.1, 1.5)
GEOMETRIC_HELP = "rotations up to 10 degrees, scalings x0.9-1.1, shifts up to 10%"
PHOTOMETRIC_HELP = (f"exposure gain x{GAIN[0]}-{GAIN[1]}, gamma {GAMMA[0]}-{GAMMA[1]}, contrast "
                    f"about the mean x{CONTRAST[0]}-{CONTRAST[1]}, colour gains "
                    f"x{COLOUR[0]}-{COLOUR[1]} per channel, and with probability "
                    f"{BLUR_PROBABILITY} a Gaussian blur of sigma {BLUR_SIGMA[0]}-{BLUR_SIGMA[1]} "
                    "px")
