"""Input pipelines: text normalisation and tokenizers (sources, transforms and grain pipelines next)."""
