"""Distributed sweep orchestrator for language-model interpretability research."""

__version__ = "0.1.0"
