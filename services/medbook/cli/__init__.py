"""The ``medbook`` command."""
