"""What the project's ExampleGens share: the driver (``driver.py``), the split spec, data
fingerprint, exec- and custom-property names (``utils.py``) and span resolution (``spans.py``)."""
