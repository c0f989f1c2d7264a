"""Policy: built-in profiles, local TOML layers, strict validation (see loader.py)."""
