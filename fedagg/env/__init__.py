"""Simulation truth: who is available, how much compute, which faults.
Aggregators never import this package (except the named oracle baseline,
which receives the true probabilities through AggregatorContext)."""
