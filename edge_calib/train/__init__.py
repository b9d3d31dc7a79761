"""Training and evaluation on the workstation (torch)."""
