"""Streamline tracking in torch (in progress: interpolation, stopping criteria and seeding so far)."""
