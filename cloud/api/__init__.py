"""The cloud's HTTP API: one FastAPI router per unit of the cloud, composed by `cloud.app`."""
