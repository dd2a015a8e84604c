"""Drop-in replacements for the reference modules: subclasses with the same constructors and
state_dict keys, whose forward runs the fused ops."""
from .dynamic_relu import DynamicReLU
from .former import Former
from .former2mobile import Former2Mobile
from .mobile2former import Mobile2Former

__all__ = ["DynamicReLU", "Former", "Former2Mobile", "Mobile2Former"]
