"""The device tier: CGM sensor source, local differential privacy, MQTT publishing, fleets of devices."""
