"""A user's own package: an aggregation rule and a model, kept outside fedagg."""
