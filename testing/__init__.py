"""Harnesses for tests, benchmarks and the demo: local services (mosquitto, S3 servers,
PostgreSQL), a fleet simulator and synthetic hard examples.

Product code (``shared``, ``edge_agent``, ``cloud_trainer``) never imports this package, and
it is not installed with them: an edge box carries no test harness. ``tests/test_layering.py``
holds that rule.
"""
