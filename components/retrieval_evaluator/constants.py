"""Names in RetrievalEvaluator's contract with the stages that read its outputs (the local
runner, the report) and between its component and executor."""

# Exec properties.
MAP_THRESHOLD_KEY = "map_threshold"
MAP_MARGIN_KEY = "map_margin"
SEED_KEY = "seed"

# The MAP table, the decision and its reason, in the ``evaluation`` (ModelEvaluation) artifact.
EVALUATION_FILE = "retrieval_metrics.json"
# Splits scored; the ModelEvaluation gets a ``<split>_mean_map`` custom property for each.
EVAL_SPLITS = ("val", "test")
MEAN_MAP_PROPERTY = "{split}_mean_map"
