"""The control plane: Runtime facade, SessionRouter, InstancePool (no tornado, no Jupyter)."""

from .runtime import ColdStart, InvokeResult, Runtime

__all__ = ["ColdStart", "InvokeResult", "Runtime"]
