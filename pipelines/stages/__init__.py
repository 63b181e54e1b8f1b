"""modelyard: pipelines/stages."""
