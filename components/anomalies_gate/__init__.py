"""AnomaliesGate: stops the run on ExampleValidator anomalies (``component.py``)."""
