"""modelyard: registry."""
