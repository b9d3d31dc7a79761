"""Networks (classifiers, calibrator, discriminators) and their safe checkpoint format."""
