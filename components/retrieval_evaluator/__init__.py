"""RetrievalEvaluator: retrieval MAP and the blessing decision (``component.py``, ``executor.py``;
``constants.py`` names the output files other stages read)."""
