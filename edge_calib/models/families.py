"""The calibrator families' names and one-line descriptions (torch-free: the CLI's help)."""

FAMILY_SUMMARIES = {
    "resnet": "the paper's ResNet generator (reference; full-resolution 7x7 convolutions)",
    "pointwise": "a per-domain colour mapping (1x1 convolutions; hidden=0 is a colour matrix)",
    "thumbnail": "a tiny network on an average-pooled thumbnail predicts a per-frame colour "
                 "matrix",
    "lowres": "a small network at 1/factor resolution, its bounded output upsampled bilinearly",
    "shallow": "a few full-resolution 3x3 convolutions (no norms, no pads)",
    "curve": "a per-frame, per-channel monotone tone curve predicted from the frame's histogram "
             "(contains histogram matching to the source; one table lookup per pixel; matrix=1 adds "
             "a per-frame colour matrix after it)",
}
DEFAULT_ARCH = "thumbnail"
PERTURBATIONS = ("symmetric", "one-sided")  # see calibrators/base.py
