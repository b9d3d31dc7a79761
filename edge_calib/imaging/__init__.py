"""Image statistics shared by the workstation and the device (numpy only): the classical
photometric corrections and the features the auto-domain model reads."""
