"""The ``learner`` command: one module per noun, no business logic."""
