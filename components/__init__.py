"""Pulumi ComponentResources for the three stages, one concern per module.

The Yandex provider SDK is imported in exactly one place, :mod:`components.yc`.
"""
