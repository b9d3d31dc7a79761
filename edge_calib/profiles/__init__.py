"""Device build profiles (package data, see engines/profiles.py)."""
