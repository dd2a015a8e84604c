"""Drop-in replacements for the reference modules (same constructors, same state_dict keys)."""
from .dynamic_relu import DynamicReLU

__all__ = ["DynamicReLU"]
