"""secretgrants: purpose-bound, short-lived secret grants for Kubernetes pods."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
