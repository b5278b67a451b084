"""Tests for gateway.validation and the profiles in profiles/."""
