"""modelyard: pipelines."""
