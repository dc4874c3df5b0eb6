"""FeatureExampleGen: the ExampleGen of the feature datasets (``component.py``, ``executor.py``)."""
