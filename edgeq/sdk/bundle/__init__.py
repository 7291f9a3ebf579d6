"""The bundle format, read and verified on the device: manifest, signatures, archives, health spec, build plan.

Both sides use it: the host writes bundles in this format (``edgeq.converters``) and the device store and runtime
read them. Standard library, numpy and cryptography only.
"""
