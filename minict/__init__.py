"""minict: a minimal, easy-to-understand container runtime."""

__version__ = "0.1.0"
