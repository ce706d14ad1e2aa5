"""Templates, sources, vocabularies, mixtures and feature conversion (no models, no training)."""
