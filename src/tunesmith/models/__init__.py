"""Base models: safe loading (hub, local, embedded) and chat tokenization."""
