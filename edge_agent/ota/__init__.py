"""Over-the-air model updates: desired state over MQTT, verification, download, model
store, hot swap, health watch and rollback."""
