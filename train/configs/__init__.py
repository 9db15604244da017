"""ml_collections recipes: default.py plus one per paper setting, picked by model name."""
