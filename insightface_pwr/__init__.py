"""insightface-pwr: knowledge distillation heads and hooks for InsightFace's arcface_torch."""
from .registry import create_head, get_head_spec, list_heads, register_head

__version__ = "0.1.0"

__all__ = ["register_head", "create_head", "list_heads", "get_head_spec", "__version__"]
