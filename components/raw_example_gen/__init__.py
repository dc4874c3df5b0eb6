"""RawExampleGen: the ExampleGen of raw image/text pairs, with a quarantine (``component.py``,
``executor.py``)."""
