"""The cloud aggregator: enrollment, rounds, encrypted aggregation, key custody and the model registry."""
