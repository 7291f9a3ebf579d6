"""Command modules of the edgeq CLI, one per area; each defines ``register(app)``.

Commands parse options, call one public library function, and render the result. Nothing else.
"""
