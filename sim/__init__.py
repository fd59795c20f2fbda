"""Simulation and studies: cohorts, the replay orchestrator, the demo, evaluation and reports."""
