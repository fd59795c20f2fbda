"""wearfed's test suite (a regular package, so no installed top-level `tests` package, e.g. gmqtt's, shadows it)."""
