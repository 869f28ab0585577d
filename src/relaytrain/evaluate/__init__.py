"""Checkpoint evaluation, always in its own process (DESIGN §9)."""
