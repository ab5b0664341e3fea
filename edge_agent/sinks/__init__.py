"""Where detection results go: MQTT events for the line, and hard-example mining into the spool."""
