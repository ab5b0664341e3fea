"""Plumbing both programs run on: the MQTT link, the HTTP server with its bearer auth, S3
clients, and configuration reading. Neutral on purpose: nothing here knows about devices,
models or rollouts, so the agent and the control plane use it alike.

These modules need the ``edge`` extra (paho-mqtt, boto3, FastAPI, uvicorn); the contracts in
``shared`` itself need only the base install. Import the submodules you need: this package
imports nothing at import time.
"""
