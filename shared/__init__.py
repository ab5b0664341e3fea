"""Contracts between the edge agent and the cloud trainer.

Messages, topics, object keys, the model manifest and its signature, the detections array,
and the synthetic production line. Importing this package has no side effects; import the
submodules you need (``shared.messages``, ``shared.topics`` ...).
"""

__version__ = "0.1.0"
