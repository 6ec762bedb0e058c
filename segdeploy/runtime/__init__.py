"""Runners behind one interface and the one registry of backend variants."""

from segdeploy.runtime import backends  # noqa: F401 - registers the built-in backends in variants.BACKENDS
