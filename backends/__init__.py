"""Backends: one flat module each. They import the core, never a framework."""
