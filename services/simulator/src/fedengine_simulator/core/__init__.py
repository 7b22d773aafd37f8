"""Pure simulator logic: local training, fleet layout."""
