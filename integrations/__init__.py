"""Integrations: one flat module per framework. They import the core, never a backend."""
