"""SchemaCurator: SchemaGen's inferred schema made into the data contract (``component.py``)."""
