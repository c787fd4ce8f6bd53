"""The records passed between the digits stages (see ``models.py`` and the JSON Schema)."""
