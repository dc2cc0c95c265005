"""Test infrastructure: a real registry, an image builder, real-tool images.

Import as `from tests.support.registry import Registry` (tests/ is a package,
so this works from pytest and from bench/ run at the repository root).
"""
