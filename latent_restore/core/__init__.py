"""Shared building blocks. Nothing in here imports a stage package."""
